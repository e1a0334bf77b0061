//! A real, headless Chromium driven over WebDriver for the console scenarios: Debian's
//! `chromedriver` on a free loopback port (it picks one and says which), a fresh browser
//! profile per session, and `fantoccini` as the client.
//!
//! ```no_run
//! # async fn scenario(gw: &execmesh_tests::RunningGateway) {
//! let browser = execmesh_tests::Browser::start().await;
//! browser.sign_in(gw, "bob", "bob-password").await;
//! browser.open(gw, "/console/approvals").await;
//! # }
//! ```
//!
//! chromedriver runs in its own process group, which is killed with the browser it started
//! when the handle is dropped (also when the test panics).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::RunningGateway;
use crate::process::ChildProcess;

/// How long chromedriver and the browser may take to start.
const START: Duration = Duration::from_secs(30);
/// How long a page element may take to appear.
const FIND: Duration = Duration::from_secs(15);
/// The browser window, as screenshots show it.
const WINDOW: (u32, u32) = (1280, 900);

/// A browser session and the chromedriver serving it.
pub struct Browser {
    client: Client,
    driver: ChildProcess,
    /// chromedriver's log (and the browser's, through it).
    _dir: tempfile::TempDir,
}

// === impl Browser ===

impl Browser {
    /// Starts chromedriver and a headless Chromium. Panics with chromedriver's log when either
    /// does not start: `tests/run.sh` installs Debian's `chromium` and `chromium-driver`.
    pub async fn start() -> Self {
        crate::init_tracing();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("chromedriver.log");
        let mut command = Command::new(binary("chromedriver"));
        command.args(["--port=0", "--allowed-ips=127.0.0.1"]);
        // Its own group: the browsers it starts are killed with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = ChildProcess::spawn("chromedriver", command, &log).unwrap_or_else(|e| {
            panic!("cannot start chromedriver: {e} (tests/run.sh installs chromium-driver)")
        });
        let port = crate::eventually(START, || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .find_map(|line| line.split("started successfully on port ").nth(1))
                .and_then(|rest| rest.trim().trim_end_matches('.').parse::<u16>().ok())
        })
        .await;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": binary("chromium"),
                "args": [
                    "--headless=new",
                    // The tests run as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            START,
            ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no browser session within {START:?}; chromedriver log {}",
                log.display()
            )
        })
        .unwrap_or_else(|e| {
            panic!(
                "cannot start a browser session: {e}; chromedriver log:\n{}",
                crate::process::log_tail(&log, 40)
            )
        });
        Self {
            client,
            driver,
            _dir: dir,
        }
    }

    /// The WebDriver client, for what the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `path` (`/console/...`) on `gw`.
    pub async fn open(&self, gw: &RunningGateway, path: &str) {
        let url = format!("{}{path}", gw.base_url());
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Signs in to `gw`'s console as `user` through its sign-in page, and checks it worked.
    pub async fn sign_in(&self, gw: &RunningGateway, user: &str, password: &str) {
        self.open(gw, "/console/login").await;
        self.fill("#username", user).await;
        self.fill("#password", password).await;
        self.click("form.stack button[type=submit]").await;
        let who = self.text("#whoami").await;
        assert_eq!(who, user, "signed in as {user}");
    }

    /// The element `css` selects, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        let found =
            tokio::time::timeout(FIND, self.client.wait().for_element(Locator::Css(css))).await;
        match found {
            Ok(Ok(element)) => element,
            Ok(Err(e)) => panic!("no `{css}`: {e}; {}", self.describe().await),
            Err(_) => panic!("no `{css}` within {FIND:?}; {}", self.describe().await),
        }
    }

    /// Whether an element `css` selects is on the page now (no waiting).
    pub async fn has(&self, css: &str) -> bool {
        self.client
            .find_all(Locator::Css(css))
            .await
            .is_ok_and(|found| !found.is_empty())
    }

    /// The text of the element `css` selects. An element replaced between finding and reading
    /// it (a page loading after a submit, a live update) is found again.
    pub async fn text(&self, css: &str) -> String {
        const ATTEMPTS: usize = 20;
        let mut attempt = 1;
        loop {
            match self.find(css).await.text().await {
                Ok(text) => return text,
                Err(e) if e.is_stale_element_reference() && attempt < ATTEMPTS => attempt += 1,
                Err(e) => panic!("cannot read the text of `{css}`: {e}"),
            }
        }
    }

    /// Types `text` into the field `css` selects (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear a field");
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("cannot type into `{css}`: {e}"));
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click `{css}`: {e}"));
    }

    /// The page's path and query.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("the current URL");
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        }
    }

    /// The value of cookie `name` (HttpOnly ones included: WebDriver sees every cookie).
    pub async fn cookie(&self, name: &str) -> String {
        self.client
            .get_named_cookie(name)
            .await
            .unwrap_or_else(|e| panic!("no cookie {name}: {e}"))
            .value()
            .to_string()
    }

    /// Saves a PNG of the window to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot directory");
        }
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Ends the browser session (chromedriver stops the browser); dropping does it harder.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client.clone().close()).await;
    }

    /// Where the browser is and what the page says, for a failure's message.
    async fn describe(&self) -> String {
        let url = self.client.current_url().await.map(|u| u.to_string());
        let text = match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        format!(
            "the page {} says:\n{text}",
            url.unwrap_or_else(|e| e.to_string())
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browsers chromedriver started are in its process group.
        if let Ok(pid) = i32::try_from(self.driver.pid()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `name` from the PATH, or Debian's location.
fn binary(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin").join(name))
}
