//! The dashboard in a real headless browser (Debian's chromium, driven by
//! Selenium through tests/browser/driver.py) against a real server on
//! Postgres: the snapshot, live changes, each wake and the OFFLINE that
//! follows, the history, actions reaching the gateway stream, gateways
//! shown disconnected and never connected, sorting and filtering, a viewer
//! without actions, a hostile name shown as text, a server restart survived
//! (reconnecting, then stale, then resumed), and a connection that goes
//! silent without closing (stale, then given up and resumed).
//! Screenshots go to target/dashboard-screenshots/.

use std::path::PathBuf;
use std::process::Stdio;

use mission_control_client::agent::AgentClient;
use mission_control_client::gateway::{GatewayClient, GatewayEvent};
use mission_control_client::{AgentRole, Backoff, ProvisionRequest};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;

use crate::held_proxy::HeldProxy;
use crate::support::*;
use crate::web::{WEB_ADMIN_TOKEN, WEB_VIEWER_TOKEN, WebRoles};

const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>";

/// A headless Chromium behind the Selenium bridge.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
    shots: PathBuf,
}

impl Browser {
    /// None only when scripts/test could not install a browser and said so
    /// (`MC_BROWSER_TESTS=unavailable`); anywhere else a missing browser
    /// fails the test.
    async fn start() -> Option<Self> {
        let missing = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
            .into_iter()
            .find(|path| !std::path::Path::new(path).exists());
        if std::env::var("MC_BROWSER_TESTS").as_deref() == Ok("unavailable") {
            eprintln!(
                "\n!!!!!!!! SKIPPED: the dashboard browser test: no browser could be installed \
                 ({}) !!!!!!!!\n",
                missing.unwrap_or("see scripts/test")
            );
            return None;
        }
        if let Some(path) = missing {
            panic!(
                "{path} is missing: apt-get install -y chromium chromium-driver \
                 (scripts/test does it), and pip install selenium"
            );
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/driver.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Not killed on drop: a SIGKILL would leave chromedriver and
            // Chromium behind. When a failed assertion drops this, its stdin
            // closes, and the driver ends its (bounded) command, reads the
            // end of input and quits the browser itself.
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().unwrap();
        let answers = BufReader::new(child.stdout.take().unwrap()).lines();
        let shots = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/dashboard-screenshots"
        ));
        std::fs::create_dir_all(&shots).unwrap();
        let mut browser = Self {
            child,
            stdin,
            answers,
            shots,
        };
        browser.answer("the browser starts").await;
        Some(browser)
    }

    async fn answer(&mut self, what: &str) -> Value {
        let line = within(what, self.answers.next_line())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: the browser driver exited (pip install selenium?)"));
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(answer["ok"], true, "{what}: {}", answer["error"]);
        answer["value"].clone()
    }

    async fn send(&mut self, what: &str, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.answer(what).await
    }

    async fn open(&mut self, url: &str) {
        self.send("open", json!({"op": "open", "url": url})).await;
    }

    async fn js(&mut self, script: &str) -> Value {
        self.send(script, json!({"op": "js", "script": script}))
            .await
    }

    /// Polls `script` until it returns something truthy (a guard against
    /// hanging, not a timing assertion).
    async fn wait(&mut self, what: &str, script: &str) -> Value {
        self.wait_up_to(what, script, PATIENCE.as_secs() / 2).await
    }

    /// `wait` with its own bound (under the bound on every answer).
    async fn wait_up_to(&mut self, what: &str, script: &str, seconds: u64) -> Value {
        assert!(seconds < PATIENCE.as_secs());
        self.send(
            what,
            json!({"op": "wait", "script": script, "timeout": seconds}),
        )
        .await
    }

    async fn click(&mut self, css: &str) {
        self.send(css, json!({"op": "click", "css": css})).await;
    }

    async fn type_text(&mut self, css: &str, text: &str) {
        self.send(css, json!({"op": "type", "css": css, "text": text}))
            .await;
    }

    /// Empties a field the way a user does, so the page hears it.
    async fn erase(&mut self, css: &str) {
        self.send(css, json!({"op": "erase", "css": css})).await;
    }

    /// Picks the option of a `<select>` by its text.
    async fn select(&mut self, css: &str, text: &str) {
        self.send(css, json!({"op": "select", "css": css, "text": text}))
            .await;
    }

    /// Waits until the table shows exactly `ids`, in that order.
    async fn wait_rows(&mut self, what: &str, ids: &[&str]) {
        let script = format!(
            "const ids = [...document.querySelectorAll('#fleet .row')].map(r => r.dataset.id); \
             return JSON.stringify(ids) === {}",
            json!(json!(ids).to_string())
        );
        self.wait(what, &script).await;
    }

    async fn screenshot(&mut self, name: &str) {
        let path = self.shots.join(format!("{name}.png"));
        self.send(
            "screenshot",
            json!({"op": "screenshot", "path": path.display().to_string()}),
        )
        .await;
    }

    async fn alert(&mut self) -> Value {
        self.send("alert", json!({"op": "alert"})).await
    }

    async fn sign_in(&mut self, token: &str) {
        self.wait(
            "the page asks for a token",
            "return !document.getElementById('login').hidden",
        )
        .await;
        self.type_text("#login-token", token).await;
        self.click("#login button[type=submit]").await;
        self.wait_live().await;
    }

    async fn wait_live(&mut self) {
        self.wait(
            "the feed is live",
            "return document.getElementById('feed').dataset.state === 'live'",
        )
        .await;
    }

    /// The text of `agent`'s cell in column `column` (None while its row
    /// is not shown).
    fn cell(agent: &str, column: &str) -> String {
        format!(
            "const row = document.querySelector('#fleet .row[data-id=\"{agent}\"]'); \
             return row ? row.querySelector('.c-{column}').textContent : null"
        )
    }

    async fn wait_cell(&mut self, agent: &str, column: &str, expected: &str) {
        let script = format!(
            "const row = document.querySelector('#fleet .row[data-id=\"{agent}\"]'); \
             return !!row && row.querySelector('.c-{column}').textContent === {}",
            json!(expected)
        );
        self.wait(&format!("{agent}'s {column} is {expected}"), &script)
            .await;
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"op\":\"quit\"}\n").await;
        let _ = within("the browser quits", self.child.wait()).await;
    }
}

/// A gateway that acknowledges every command as delivered and reports
/// each wake (agent, attempt) and retire (agent) it got.
fn acking_gateway(endpoint: &str, token: &str) -> mpsc::UnboundedReceiver<(String, String, u32)> {
    let client = GatewayClient::connect(endpoint, token)
        .unwrap()
        .with_backoff(Backoff::new(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_millis(300),
        ));
    let mut events = client.events();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(event) = events.next().await {
            let seen = match event {
                GatewayEvent::Wake { command, ack } => {
                    let _ = ack.delivered().await;
                    ("wake".to_owned(), command.agent_id, command.attempt)
                }
                GatewayEvent::Retire { command, ack } => {
                    let _ = ack.delivered().await;
                    ("retire".to_owned(), command.agent_id, 0)
                }
                GatewayEvent::Connected { .. } => ("connected".to_owned(), String::new(), 0),
                _ => continue,
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for the gateway to report `kind` for `agent` (with `attempt`,
/// for wakes).
async fn gateway_saw(
    seen: &mut mpsc::UnboundedReceiver<(String, String, u32)>,
    kind: &str,
    agent: &str,
    attempt: Option<u32>,
) {
    within(&format!("the gateway gets {kind} {agent}"), async {
        loop {
            let (k, a, n) = seen.recv().await.expect("the gateway goes on");
            if k == kind && a == agent && attempt.is_none_or(|want| want == n) {
                return;
            }
        }
    })
    .await
}

/// The feed indicator's text once the stream broke.
const BROKEN: &str = "const feed = document.getElementById('feed'); \
    return ['reconnecting', 'stale'].includes(feed.dataset.state) && feed.textContent";

/// A script true once the gateways panel shows `gateway` with `class`
/// and a state starting with `state`.
fn gateway_shown(gateway: &str, class: &str, state: &str) -> String {
    format!(
        "const g = document.querySelector('#gateways li[data-gateway=\"{gateway}\"]'); \
         return !!g && g.className === {} && g.querySelector('.state').textContent.startsWith({})",
        json!(class),
        json!(state)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let db = database().await;
    let roles = WebRoles::new();
    let port = free_port();
    let flags = || {
        let mut flags = roles.flags(fast_flags(db.url()));
        set_flag(&mut flags, "--listen", &format!("127.0.0.1:{port}"));
        // Short enough to watch three wakes; an agent that checked in stays
        // online however slow the machine.
        set_flag(&mut flags, "--checkin-deadline", "1s");
        set_flag(&mut flags, "--lease-ttl", "5m");
        set_flag(&mut flags, "--heartbeat-interval", "1m");
        // far-1's wakes wait for its gateway for the whole test.
        set_flag(&mut flags, "--gateway-grace", "5m");
        flags
    };
    let app = spawn_app(flags()).await;
    let admin = app
        .operator
        .clone()
        .with_operator_token(WEB_ADMIN_TOKEN)
        .unwrap();
    let gateway_token = admin
        .register_gateway("gw-1", "", false)
        .await
        .unwrap()
        .gateway_token;
    let mut gateway = acking_gateway(&app.endpoint, &gateway_token);
    let good = admin
        .provision(ProvisionRequest::new("good-1", "gw-1", AgentRole::BoardWorker).on_board("b1"))
        .await
        .unwrap();
    admin
        .provision(ProvisionRequest {
            name: HOSTILE_NAME.to_owned(),
            ..ProvisionRequest::new("evil-1", "gw-1", AgentRole::BoardLead).on_board("b1")
        })
        .await
        .unwrap();

    // The page itself is open; its calls want a token.
    let url = format!("http://127.0.0.1:{port}/");
    browser.open(&url).await;
    browser.sign_in(WEB_ADMIN_TOKEN).await;
    // The snapshot.
    browser.wait_cell("good-1", "gateway", "gw-1").await;
    browser.wait_cell("evil-1", "board", "b1").await;

    // The hostile name is text: exactly its characters, no element made.
    assert_eq!(
        browser.js(&Browser::cell("evil-1", "name")).await,
        json!(HOSTILE_NAME)
    );
    assert_eq!(
        browser
            .js("return document.querySelectorAll('img').length")
            .await,
        json!(0)
    );
    assert_eq!(browser.alert().await, Value::Null, "no script ran");

    // A check-in shows as ONLINE.
    let mut agent = AgentClient::connect(&app.endpoint, &good.agent_token).unwrap();
    agent.heartbeat().await.unwrap();
    browser.wait_cell("good-1", "status", "ONLINE").await;
    // The check-in is in the latency picture, and the gateway is shown
    // holding its stream.
    browser
        .wait(
            "the check-in in the latency chart",
            "return document.getElementById('chart-latency').dataset.checkIns === '1'",
        )
        .await;
    browser
        .wait(
            "gw-1 shown connected",
            "const g = document.querySelector('#gateways li[data-gateway=\"gw-1\"]'); \
             return !!g && g.className === 'connected'",
        )
        .await;

    // An agent that never checks in: each wake, then OFFLINE with the reason.
    admin
        .provision(ProvisionRequest::new("mute-1", "gw-1", AgentRole::BoardWorker).on_board("b2"))
        .await
        .unwrap();
    for attempt in 1..=3 {
        gateway_saw(&mut gateway, "wake", "mute-1", Some(attempt)).await;
    }
    browser.wait_cell("mute-1", "status", "OFFLINE").await;
    browser.wait_cell("mute-1", "attempts", "3").await;
    let error = browser.js(&Browser::cell("mute-1", "error")).await;
    assert!(
        error
            .as_str()
            .unwrap()
            .contains("no check-in after 3 wake attempts"),
        "{error}"
    );

    // Its story, newest first.
    browser.click("#fleet .row[data-id=\"mute-1\"]").await;
    let story = browser
        .wait(
            "the history of mute-1",
            "const lines = [...document.querySelectorAll('#agent-history li')]; \
             return lines.some(l => l.dataset.reason === 'max attempts reached') && \
               lines.map(l => l.dataset.reason + ' | ' + l.textContent)",
        )
        .await;
    let story: Vec<String> = story
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line.as_str().unwrap().to_owned())
        .collect();
    let reasons: Vec<&str> = story
        .iter()
        .map(|line| line.split(" | ").next().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "max attempts reached",
            "deadline missed",
            "deadline missed",
            "provisioned"
        ],
        "{story:#?}"
    );
    assert!(
        story[1].contains("attempt 3") && story[2].contains("attempt 2"),
        "{story:#?}"
    );
    assert!(
        story[0].contains("OFFLINE") && story[0].contains("no check-in after 3 wake attempts"),
        "{story:#?}"
    );
    browser.screenshot("admin-history").await;

    // A wake from the page reaches the gateway stream: a fresh cycle.
    browser.click("#action-wake").await;
    gateway_saw(&mut gateway, "wake", "mute-1", Some(1)).await;
    browser
        .wait(
            "the page says it woke mute-1",
            "return document.getElementById('agent-notice').textContent.startsWith('Woke mute-1')",
        )
        .await;

    // Delete asks first; then the gateway is told to retire it, and it is
    // gone from the page.
    browser.click("#action-delete").await;
    let asked = browser
        .js("return document.getElementById('agent-actions').textContent")
        .await;
    assert!(
        asked.as_str().unwrap().contains("Delete mute-1?"),
        "{asked}"
    );
    browser.click("#action-delete-confirm").await;
    gateway_saw(&mut gateway, "retire", "mute-1", None).await;
    browser
        .wait(
            "mute-1 leaves the table",
            "return !document.querySelector('#fleet .row[data-id=\"mute-1\"]')",
        )
        .await;
    browser.click("#agent-close").await;

    // Provision from the page: the token is shown once, the agent appears
    // and its first wake reaches the gateway.
    browser
        .type_text("#provision input[name=agent_id]", "new-1")
        .await;
    browser
        .type_text("#provision input[name=gateway_id]", "gw-1")
        .await;
    browser
        .type_text("#provision input[name=board_id]", "b4")
        .await;
    browser.click("#provision button[type=submit]").await;
    let result = browser
        .wait(
            "the provision result",
            "return document.getElementById('provision-result').textContent",
        )
        .await;
    assert!(
        result
            .as_str()
            .unwrap()
            .starts_with("Created new-1. Its token, shown only now: mca_"),
        "{result}"
    );
    gateway_saw(&mut gateway, "wake", "new-1", Some(1)).await;
    browser.wait_cell("new-1", "board", "b4").await;
    browser.screenshot("admin").await;

    // A gateway registered and never connected says so, and one that held
    // its stream and lost it is shown disconnected, since when and why.
    // (Its client ends the stream when a command comes and nobody reads
    // its events: far-1's first wake.)
    admin.register_gateway("gw-3", "", false).await.unwrap();
    browser
        .wait(
            "gw-3 shown never connected",
            &gateway_shown("gw-3", "never-connected", "never connected (registered 20"),
        )
        .await;
    let far_token = admin
        .register_gateway("gw-2", "", false)
        .await
        .unwrap()
        .gateway_token;
    let far_reader = {
        use futures_util::StreamExt;
        let mut events = GatewayClient::connect(&app.endpoint, &far_token)
            .unwrap()
            .events();
        tokio::spawn(async move { while events.next().await.is_some() {} })
    };
    browser
        .wait(
            "gw-2 shown connected",
            &gateway_shown("gw-2", "connected", "connected since "),
        )
        .await;
    far_reader.abort();
    admin
        .provision(ProvisionRequest::new("far-1", "gw-2", AgentRole::BoardWorker).on_board("b0"))
        .await
        .unwrap();
    browser
        .wait(
            "gw-2 shown disconnected",
            &gateway_shown("gw-2", "disconnected", "disconnected since 20"),
        )
        .await;
    let why = browser
        .js("return document.querySelector('#gateways li[data-gateway=\"gw-2\"] .state').textContent")
        .await;
    assert!(why.as_str().unwrap().contains("(stream closed)"), "{why}");
    browser
        .wait(
            "gw-1 still shown connected",
            &gateway_shown("gw-1", "connected", "connected since "),
        )
        .await;
    browser.screenshot("gateway-disconnected").await;

    // Sorting and filtering, on a fleet whose fields stand still: new-1
    // and evil-1 have used their wakes, far-1's are held for its gateway.
    browser.wait_cell("new-1", "status", "OFFLINE").await;
    browser.wait_cell("evil-1", "status", "OFFLINE").await;
    browser.wait_cell("far-1", "status", "PROVISIONING").await;
    // The counts at the top follow every change, the deletion of mute-1
    // (gw-1, b2) included: its board has left the table.
    let counts = json!([
        ["PROVISIONING=1", "UPDATING=0", "ONLINE=1", "OFFLINE=2"],
        [
            "gw-1|(all boards)|||1|2",
            "|b1|||1|1",
            "|b4||||1",
            "gw-2|(all boards)|1|||",
            "|b0|1|||"
        ]
    ]);
    browser
        .wait(
            "the counts by status, per gateway and board",
            &format!(
                "const totals = [...document.querySelectorAll('#totals .total')] \
                   .map(t => t.dataset.status + '=' + t.querySelector('b').textContent); \
                 const rows = [...document.querySelectorAll('#counts tbody tr')] \
                   .map(r => [...r.children].map(c => c.textContent).join('|')); \
                 return JSON.stringify([totals, rows]) === {}",
                json!(counts.to_string())
            ),
        )
        .await;
    let all = ["evil-1", "far-1", "good-1", "new-1"];
    browser.wait_rows("by id", &all).await;
    browser.click("[data-sort=board]").await;
    browser
        .wait_rows(
            "by board (b0, b1, b1, b4)",
            &["far-1", "evil-1", "good-1", "new-1"],
        )
        .await;
    browser.click("[data-sort=board]").await;
    browser
        .wait_rows(
            "by board, descending (ties by id)",
            &["new-1", "evil-1", "good-1", "far-1"],
        )
        .await;
    assert_eq!(
        browser
            .js("return document.querySelector('[data-sort=board]').getAttribute('aria-sort')")
            .await,
        json!("descending")
    );
    browser.click("[data-sort=gateway]").await;
    browser
        .wait_rows("by gateway", &["evil-1", "good-1", "new-1", "far-1"])
        .await;
    browser.click("[data-sort=status]").await;
    browser
        .wait_rows(
            "by status (provisioning, online, offline)",
            &["far-1", "good-1", "evil-1", "new-1"],
        )
        .await;
    browser.click("[data-sort=id]").await;
    browser.wait_rows("by id again", &all).await;

    browser.type_text("#filter-gateway", "gw-2").await;
    browser.wait_rows("gateway gw-2", &["far-1"]).await;
    assert_eq!(
        browser
            .js("return document.getElementById('shown').textContent")
            .await,
        json!("1 of 4 agents")
    );
    browser.erase("#filter-gateway").await;
    browser.wait_rows("no filter", &all).await;
    browser.type_text("#filter-board", "b1").await;
    browser.wait_rows("board b1", &["evil-1", "good-1"]).await;
    browser.select("#filter-status", "online").await;
    browser.wait_rows("board b1 and online", &["good-1"]).await;
    browser.erase("#filter-board").await;
    browser.select("#filter-status", "offline").await;
    browser.wait_rows("offline", &["evil-1", "new-1"]).await;
    browser.select("#filter-status", "any status").await;
    browser.type_text("#filter-id", "NEW").await;
    browser
        .wait_rows("id contains new, any case", &["new-1"])
        .await;
    browser.type_text("#filter-id", "nobody").await;
    browser.wait_rows("no match", &[]).await;
    assert_eq!(
        browser
            .js("return document.getElementById('shown').textContent")
            .await,
        json!("0 of 4 agents")
    );
    browser.erase("#filter-id").await;
    browser.wait_rows("no filter again", &all).await;

    // A restart: the page notices, reconnects by itself and resumes after
    // the last revision it saw (no snapshot), then shows changes made on
    // the new server.
    within("the shutdown", app.app.shutdown()).await;
    let broken = browser.wait("the page sees the stream break", BROKEN).await;
    browser.screenshot("restarting").await;
    // Broken for longer than the page's STALE_AFTER_MS (5 s): it says that
    // what it shows may be out of date, still since the same revision.
    let stale = browser
        .wait(
            "the page calls its view stale",
            "const feed = document.getElementById('feed'); \
             return feed.dataset.state === 'stale' && feed.textContent",
        )
        .await;
    assert_eq!(
        stale.as_str().unwrap().trim_start_matches("stale"),
        broken.as_str().unwrap().trim_start_matches("reconnecting"),
        "{broken} then {stale}"
    );
    browser.screenshot("stale").await;
    let app = spawn_app(flags()).await;
    let resumed = browser
        .wait(
            "the page resumes",
            "const feed = document.getElementById('feed'); \
             return feed.dataset.state === 'live' && feed.textContent",
        )
        .await;
    let last_seen = broken
        .as_str()
        .unwrap()
        .trim_start_matches("reconnecting (since revision ");
    assert_eq!(
        resumed,
        json!(format!("live (resumed after revision {}", last_seen)),
        "{broken}"
    );
    let admin = app
        .operator
        .clone()
        .with_operator_token(WEB_ADMIN_TOKEN)
        .unwrap();
    admin
        .provision(ProvisionRequest::new("after-1", "gw-1", AgentRole::BoardWorker).on_board("b1"))
        .await
        .unwrap();
    browser.wait_cell("after-1", "gateway", "gw-1").await;
    browser.wait_cell("good-1", "status", "ONLINE").await;
    let notice = browser
        .js("return document.getElementById('notice').textContent")
        .await;
    assert_eq!(notice, json!(""), "resumed, nothing reloaded");

    // While the page is away, changes it missed are compacted out of the
    // history (by a server on another port, with a tiny retention): it
    // cannot resume, so it reloads the snapshot and says so.
    within("the shutdown", app.app.shutdown()).await;
    let broken = browser.wait("the page sees the stream break", BROKEN).await;
    let revision: u64 = broken
        .as_str()
        .unwrap()
        .trim_start_matches("reconnecting (since revision ")
        .trim_end_matches(')')
        .parse()
        .unwrap();
    let mut compacting = flags();
    set_flag(&mut compacting, "--listen", "127.0.0.1:0");
    set_flag(&mut compacting, "--event-retention", "1ms");
    set_flag(&mut compacting, "--compaction-interval", "50ms");
    let elsewhere = spawn_app(compacting).await;
    let admin = elsewhere
        .operator
        .clone()
        .with_operator_token(WEB_ADMIN_TOKEN)
        .unwrap();
    admin
        .provision(ProvisionRequest::new("missed-1", "gw-1", AgentRole::BoardWorker).on_board("b3"))
        .await
        .unwrap();
    within("the history is compacted past the page's revision", async {
        loop {
            let resumed = admin
                .watch(mission_control_client::WatchAgentRequest {
                    start_revision: revision,
                    ..Default::default()
                })
                .await;
            let refused = match resumed {
                Err(mission_control_client::Error::Status(status)) => Some(status),
                Err(other) => panic!("{other}"),
                Ok(mut stream) => stream.message().await.err(),
            };
            if refused.is_some_and(|status| status.code() == tonic::Code::OutOfRange) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    within("the shutdown", elsewhere.app.shutdown()).await;
    let app = spawn_app(flags()).await;
    browser
        .wait(
            "the page says it reloaded",
            "return document.getElementById('notice').textContent.includes('reloaded the snapshot')",
        )
        .await;
    browser.wait_live().await;
    browser.wait_cell("missed-1", "board", "b3").await;
    browser.wait_cell("after-1", "gateway", "gw-1").await;
    browser.screenshot("reloaded").await;

    // A viewer sees the fleet and no actions.
    browser.click("#logout").await;
    browser.sign_in(WEB_VIEWER_TOKEN).await;
    browser.wait_cell("good-1", "status", "ONLINE").await;
    browser.click("#fleet .row[data-id=\"good-1\"]").await;
    browser
        .wait(
            // (compacted away above: the list says there is none)
            "good-1's history is loaded",
            "return document.querySelectorAll('#agent-history li').length > 0",
        )
        .await;
    let actions = browser
        .js(
            "return [document.querySelectorAll('#agent-actions button').length, \
               document.getElementById('provision').hidden, \
               document.getElementById('access').textContent]",
        )
        .await;
    assert_eq!(actions, json!([0, true, "signed in as viewer"]));
    browser.screenshot("viewer").await;

    // A connection that goes silent without closing (through a proxy that
    // holds it): the page calls its view stale once nothing, not even a
    // bookmark, has come for a while, then gives the stream up and resumes
    // on a new connection, with what changed meanwhile.
    let proxy = HeldProxy::start(app.app.addr()).await;
    browser.open(&format!("http://{}/", proxy.addr)).await;
    browser.sign_in(WEB_VIEWER_TOKEN).await;
    browser.wait_cell("good-1", "status", "ONLINE").await;
    proxy.cut();
    let admin = app
        .operator
        .clone()
        .with_operator_token(WEB_ADMIN_TOKEN)
        .unwrap();
    admin
        .provision(ProvisionRequest::new("quiet-1", "gw-1", AgentRole::BoardWorker).on_board("b5"))
        .await
        .unwrap();
    let silent = browser
        .wait(
            "the page calls the silent stream stale",
            "const feed = document.getElementById('feed'); \
             return feed.dataset.state === 'stale' && feed.textContent",
        )
        .await;
    let silent = silent.as_str().unwrap();
    let revision = silent
        .strip_prefix("stale (since revision ")
        .and_then(|rest| rest.split_once(", nothing heard for "))
        .map(|(revision, _)| revision)
        .unwrap_or_else(|| panic!("{silent}"));
    assert_eq!(
        browser.js(&Browser::cell("quiet-1", "board")).await,
        Value::Null,
        "the change made after the cut has not reached the page"
    );
    browser.screenshot("silent").await;
    // (Given up 15 s after it last heard anything; a retry that lands on
    // another connection the proxy holds waits out its own 15 s.)
    let resumed = browser
        .wait_up_to(
            "the page gives the silent stream up and resumes",
            "const feed = document.getElementById('feed'); \
             return feed.dataset.state === 'live' && feed.textContent",
            55,
        )
        .await;
    assert_eq!(
        resumed,
        json!(format!("live (resumed after revision {revision})"))
    );
    browser.wait_cell("quiet-1", "board", "b5").await;

    browser.quit().await;
    drop(proxy);
    app.app.shutdown().await;
}
