//! Running the real binary from a test: its output collected, temporary
//! files, a free port. Shared by the test files that start the binary.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Only a guard against hanging, never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);
pub const BINARY: &str = env!("CARGO_BIN_EXE_mission-control");

/// A running binary whose output is collected; killed on drop.
pub struct Running {
    pub child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Self { child, output }
    }

    pub fn text(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Waits for a line containing `needle`, or for the process to exit.
    pub async fn wait_for(&mut self, needle: &str) -> bool {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::time::Instant::now() < deadline {
            if self.text().contains(needle) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return self.text().contains(needle);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Waits for the process to exit; its exit status.
    pub async fn exit(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "mc-edge-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
