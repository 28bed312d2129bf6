//! A client nobody here wrote: Python grpcio with stubs generated from proto/.

use crate::support::*;

#[tokio::test]
async fn a_python_agent_checks_in_and_a_python_watcher_sees_it() {
    let db = database().await;
    // A Python process may take seconds to start on a loaded machine: no
    // deadline or lease runs out while it does.
    let mut flags = fast_flags(db.url());
    set_flag(&mut flags, "--checkin-deadline", "5m");
    set_flag(&mut flags, "--lease-ttl", "5m");
    let app = spawn_app(flags).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/interop.py");
    // Each wait in the script has a 30 s timeout of its own; this bounds
    // the process as a whole (a hung interpreter), and kills it if it runs
    // past that or the test ends first.
    let run = tokio::process::Command::new("python3")
        .args([script, "--endpoint", &app.app.addr().to_string()])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE * 5, run)
        .await
        .expect("interop.py ends within five minutes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "interop.py failed (pip install grpcio grpcio-tools; scripts/test does it):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with("ok: python agent checked in"),
        "{stdout}"
    );

    let agent = app.operator.get("py-agent").await.unwrap();
    assert_eq!(
        agent.status,
        mission_control_client::AgentStatus::Online as i32
    );
    assert_eq!(agent.reported_template_version, "py-1");
    app.app.shutdown().await;
}
