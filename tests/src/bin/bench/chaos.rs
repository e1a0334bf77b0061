//! The `chaos` scenario: the fault scenarios of `execmesh_tests::chaos` at full size (NATS killed twice during a 2,000,000-line job, an agent killed under its jobs, a replica killed under a job it started, the audit-sink killed six times during 2,000 calls, NATS away for 5 s while idle, a job flooding 64 MiB past a 4 MiB user quota on the smallest JetStream budget, NATS away for 10 s while 16 clients call), their figures, and a failure naming any promise that broke.

use anyhow::bail;
use serde_json::{Map, Value};

use execmesh_tests::chaos::{Scenario, Size};

pub async fn chaos() -> anyhow::Result<Value> {
    let mut report = Map::new();
    let mut broken = Vec::new();
    for scenario in Scenario::ALL {
        match scenario.run(&Size::FULL).await {
            Ok(figures) => {
                report.insert(scenario.name().to_string(), figures);
            }
            Err(e) => {
                eprintln!("{e}");
                report.insert(scenario.name().to_string(), e.figures.clone());
                broken.push(scenario.name());
            }
        }
    }
    if !broken.is_empty() {
        eprintln!("{}", serde_json::to_string_pretty(&report)?);
        bail!("chaos: promises broken in {}", broken.join(", "));
    }
    Ok(Value::Object(report))
}
