//! A throwaway Postgres cluster of a test's own, for tests that stop,
//! restart or break the database. Never the shared server: its own data
//! directory and port, stopped and removed on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};

/// Ports tried for throwaway clusters: `MC_TEST_PG_PORTS` ("first-last")
/// overrides the default range.
fn port_range() -> (u16, u16) {
    std::env::var("MC_TEST_PG_PORTS")
        .ok()
        .and_then(|range| {
            let (first, last) = range.split_once('-')?;
            Some((first.trim().parse().ok()?, last.trim().parse().ok()?))
        })
        .unwrap_or((56400, 56499))
}

/// Where `initdb` and `pg_ctl` live: `MC_TEST_PG_BIN`, or the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MC_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres server binaries under /usr/lib/postgresql (or set MC_TEST_PG_BIN)")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a Postgres version under /usr/lib/postgresql")
        .1
}

pub struct PostgresCluster {
    dir: PathBuf,
    /// The data directory, below `dir` (initdb wants it empty or missing).
    data: String,
    port: u16,
    bin: PathBuf,
}

impl PostgresCluster {
    /// Creates and starts a cluster (trust auth, user `postgres`, no fsync)
    /// on a free port of the range. Postgres refuses to run as root, so as
    /// root every command runs as the `postgres` user.
    pub fn start() -> Self {
        let (first, last) = port_range();
        Self::start_in(first, last)
    }

    /// As [`PostgresCluster::start`], on a free port in `first..=last`. The
    /// range lies in the kernel's ephemeral range: a port free when checked
    /// may be taken by a client socket before Postgres binds it, so a first
    /// start that fails moves on to another free port.
    pub fn start_in(first: u16, last: u16) -> Self {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let span = last - first + 1;
        let free_port = || {
            (0..span)
                .map(|_| first + NEXT.fetch_add(1, Ordering::Relaxed) % span)
                .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
                .expect("a free port for a throwaway Postgres cluster")
        };
        let dir = std::env::temp_dir().join(format!(
            "mc-pg-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir for the cluster");
        let data = dir
            .join("data")
            .to_str()
            .expect("a UTF-8 temp path")
            .to_owned();
        let mut cluster = Self {
            dir,
            data,
            port: free_port(),
            bin: bin_dir(),
        };
        cluster.chown();
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        for _ in 0..4 {
            if cluster.try_start().is_ok() {
                return cluster;
            }
            cluster.port = free_port();
        }
        cluster.start_again();
        cluster
    }

    /// A URL for database `name` (`postgres` always exists).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the cluster (fast: sessions are ended) and waits until it is.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts it again and waits until it accepts connections. The port is
    /// in the kernel's ephemeral range, so a client socket may hold it for a
    /// moment while the cluster is down: a failed start is tried again, a
    /// bounded number of times.
    pub fn start_again(&self) {
        let mut failures = Vec::new();
        for _ in 0..10 {
            match self.try_start() {
                Ok(()) => return,
                Err(error) => failures.push(error),
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "the cluster on port {} did not start: {failures:?}\nits log, newest first:\n{}",
            self.port,
            tail.join("\n")
        );
    }

    fn try_start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        self.try_run(
            "pg_ctl",
            &[
                "-D",
                self.data(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
    }

    /// Serves TLS (`ssl = on`) with this certificate and key, and restarts.
    pub fn enable_ssl(&self, cert_pem: &str, key_pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        let data = PathBuf::from(self.data());
        std::fs::write(data.join("server.crt"), cert_pem).expect("write server.crt");
        let key = data.join("server.key");
        std::fs::write(&key, key_pem).expect("write server.key");
        // Postgres refuses a key others can read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("read conf");
        conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(data.join("postgresql.conf"), conf).expect("write conf");
        self.chown();
        self.stop();
        self.start_again();
    }

    fn data(&self) -> &str {
        &self.data
    }

    /// Whether this process runs as root (its effective uid is 0).
    fn as_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(2) == Some("0"))
            })
            .unwrap_or(false)
    }

    fn chown(&self) {
        if Self::as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir)
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown of {} failed", self.dir.display());
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        if let Err(error) = self.try_run(tool, args) {
            panic!("{error}");
        }
    }

    /// One of the cluster's tools, run as the postgres user (Postgres
    /// refuses to run as root).
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if Self::as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(tool);
        let output = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
