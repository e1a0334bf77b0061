//! Guard tiers on the node: which tier each operation needs, and the host's own cap on the tier a request may act with.
//!
//! A request carries the caller's tier, signed by the gateway. The agent acts with the lower of
//! that and its `max_tier`, whatever the gateway says, and refuses an operation that needs more.

use execmesh_proto::Token;
use execmesh_proto::pb::{self, ErrorCode, exec_request, file_request};

use crate::refusal::Refusal;

pub use execmesh_proto::tier::Tier;

/// The tier a kill needs.
pub const KILL: (Tier, &str) = (Tier::Standard, "killing a job");

/// The tier asking whether a job still runs needs.
pub const QUERY: (Tier, &str) = (Tier::Readonly, "asking after a job");

/// The tier an ExecRequest's body needs, and what it does in words (for refusals).
pub fn needed(body: Option<&exec_request::Body>) -> (Tier, &'static str) {
    use file_request::Op;
    match body {
        // A runbook the gateway signed needs the tier it declares (a lower tier may run a
        // reviewed operation); one that declares none needs what any command needs.
        Some(exec_request::Body::Run(pb::RunRequest {
            runbook: Some(rb), ..
        })) => match Tier::from_wire(rb.tier) {
            Some(tier) => (tier, "running this runbook"),
            None => (Tier::Standard, "running a command"),
        },
        Some(exec_request::Body::Run(_)) => (Tier::Standard, "running a command"),
        Some(exec_request::Body::File(file)) => match &file.op {
            Some(Op::Read(_) | Op::ChunkRead(_)) => (Tier::Readonly, "reading a file"),
            Some(Op::Stat(_)) => (Tier::Readonly, "a file stat"),
            Some(Op::List(_)) => (Tier::Readonly, "listing a directory"),
            Some(Op::Write(w)) if w.append => (Tier::Standard, "appending to a file"),
            Some(Op::Write(_)) => (Tier::Standard, "writing a file"),
            Some(Op::Move(_)) => (Tier::Dangerous, "moving a file"),
            Some(Op::Delete(_)) => (Tier::Dangerous, "deleting a file"),
            Some(Op::ChunkWrite(_)) => (Tier::Dangerous, "copying a file onto this host"),
            // Refused as invalid later; asking for the most keeps an unknown op from slipping by.
            None => (Tier::Dangerous, "an unnamed file operation"),
        },
        Some(exec_request::Body::Grep(_)) => (Tier::Readonly, "searching files"),
        Some(exec_request::Body::Facts(facts)) if facts.refresh => {
            (Tier::Standard, "refreshing the fact pack")
        }
        Some(exec_request::Body::Facts(_)) => (Tier::Readonly, "reading the fact pack"),
        None => (Tier::Dangerous, "a request without a body"),
    }
}

/// The tier the request acts with on this host — the lower of its own (`requested`, the wire
/// value) and `host_max` — if that is at least `needed` for `what`; otherwise the refusal.
pub fn admit(
    host: &Token,
    requested: i32,
    host_max: Tier,
    (needed, what): (Tier, &str),
) -> Result<Tier, Refusal> {
    let refuse = |message: String| Refusal::new(ErrorCode::Tier, message);
    let Some(requested) = Tier::from_wire(requested) else {
        return Err(refuse(format!(
            "host {host}: the request names no tier (tier {requested}); a request must carry \
             the caller's tier"
        )));
    };
    if needed > host_max {
        return Err(refuse(format!(
            "host {host}: {what} needs tier {needed}, and this host allows at most \
             {host_max} (its max_tier)"
        )));
    }
    if needed > requested {
        return Err(refuse(format!(
            "host {host}: {what} needs tier {needed}; the caller's tier is {requested}"
        )));
    }
    Ok(requested.min(host_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Token {
        Token::parse("host id", "web-1").expect("token")
    }

    fn run() -> exec_request::Body {
        exec_request::Body::Run(pb::RunRequest::default())
    }

    fn file(op: file_request::Op) -> exec_request::Body {
        exec_request::Body::File(pb::FileRequest { op: Some(op) })
    }

    #[test]
    fn tiers_are_ordered_and_parse() {
        assert!(Tier::Readonly < Tier::Standard && Tier::Standard < Tier::Dangerous);
        assert_eq!("Standard".parse::<Tier>(), Ok(Tier::Standard));
        assert!("root".parse::<Tier>().is_err());
    }

    #[test]
    fn each_operation_needs_its_tier() {
        use file_request::Op;
        let cases = [
            (run(), Tier::Standard),
            (file(Op::Read(Default::default())), Tier::Readonly),
            (file(Op::Write(Default::default())), Tier::Standard),
            (file(Op::Move(Default::default())), Tier::Dangerous),
            (file(Op::Delete(Default::default())), Tier::Dangerous),
            (file(Op::ChunkWrite(Default::default())), Tier::Dangerous),
            (file(Op::ChunkRead(Default::default())), Tier::Readonly),
            (exec_request::Body::Grep(Default::default()), Tier::Readonly),
            (
                exec_request::Body::Facts(pb::FactsRequest { refresh: true }),
                Tier::Standard,
            ),
            (
                exec_request::Body::Facts(pb::FactsRequest { refresh: false }),
                Tier::Readonly,
            ),
        ];
        for (body, tier) in cases {
            assert_eq!(needed(Some(&body)).0, tier, "{body:?}");
        }
        assert_eq!(KILL.0, Tier::Standard);
    }

    #[test]
    fn a_runbook_needs_its_own_tier_and_the_host_cap_still_applies() {
        let runbook = |tier: pb::Tier| {
            exec_request::Body::Run(pb::RunRequest {
                runbook: Some(pb::RunbookRef {
                    name: "df".into(),
                    tier: tier as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let readonly = pb::Tier::Readonly as i32;
        let need = needed(Some(&runbook(pb::Tier::Readonly)));
        assert_eq!(
            admit(&host(), readonly, Tier::Readonly, need),
            Ok(Tier::Readonly)
        );
        let need = needed(Some(&runbook(pb::Tier::Standard)));
        assert!(admit(&host(), readonly, Tier::Dangerous, need).is_err());
        assert!(admit(&host(), pb::Tier::Standard as i32, Tier::Readonly, need).is_err());
        assert_eq!(
            needed(Some(&runbook(pb::Tier::Unspecified))).0,
            Tier::Standard
        );
    }

    #[test]
    fn the_effective_tier_is_the_lower_of_request_and_host() {
        let standard = pb::Tier::Standard as i32;
        let dangerous = pb::Tier::Dangerous as i32;
        let need = needed(Some(&run()));
        assert_eq!(
            admit(&host(), dangerous, Tier::Standard, need),
            Ok(Tier::Standard)
        );
        assert_eq!(
            admit(&host(), standard, Tier::Dangerous, need),
            Ok(Tier::Standard)
        );
        let r = admit(&host(), dangerous, Tier::Readonly, need).unwrap_err();
        assert_eq!(r.code, ErrorCode::Tier);
        assert!(
            r.message.contains("web-1") && r.message.contains("max_tier"),
            "{r:?}"
        );
        let r = admit(&host(), pb::Tier::Readonly as i32, Tier::Dangerous, need).unwrap_err();
        assert!(r.message.contains("caller's tier is readonly"), "{r:?}");
    }

    #[test]
    fn a_request_without_a_tier_is_refused() {
        let r = admit(&host(), 0, Tier::Dangerous, needed(Some(&run()))).unwrap_err();
        assert_eq!(r.code, ErrorCode::Tier);
        assert!(r.message.contains("no tier"), "{r:?}");
        assert!(admit(&host(), 99, Tier::Dangerous, KILL).is_err());
    }
}
