//! The live set of operator credentials: the roles file, reloaded when it
//! changes (polled) or on SIGHUP, plus the `--operator-token` shortcut. A
//! file that does not parse keeps the credentials in force, and says so.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::credentials::{Credentials, Operator};

pub struct Operators {
    roles_file: Option<PathBuf>,
    /// The shortcut's admin token (hashed), merged into every reload.
    shortcut: Credentials,
    current: RwLock<Arc<Credentials>>,
    /// The roles file's modification time when it was last read.
    read_at: Mutex<Option<SystemTime>>,
}

impl Operators {
    /// No credentials: operator calls are not authenticated.
    pub fn open() -> Self {
        Self::new(None, Credentials::default())
    }

    /// `admin_token` is the `--operator-token` shortcut; `roles_file` is
    /// read now, and a file that does not parse stops the start.
    pub fn load(roles_file: Option<PathBuf>, admin_token: Option<&str>) -> Result<Self, String> {
        let shortcut = match admin_token {
            Some(token) => Credentials::default().with_admin_token("operator-token", token),
            None => Credentials::default(),
        };
        let operators = Self::new(roles_file, shortcut);
        operators.reload()?;
        Ok(operators)
    }

    fn new(roles_file: Option<PathBuf>, shortcut: Credentials) -> Self {
        Self {
            current: RwLock::new(Arc::new(shortcut.clone())),
            roles_file,
            shortcut,
            read_at: Mutex::new(None),
        }
    }

    /// Whether operator calls must authenticate: a roles file is set (even
    /// an empty one closes them) or an operator token is.
    pub fn required(&self) -> bool {
        self.roles_file.is_some() || !self.shortcut.is_empty()
    }

    pub fn by_token(&self, token: &str) -> Option<Operator> {
        self.snapshot().by_token(token).cloned()
    }

    pub fn by_subject(&self, subject: &str) -> Option<Operator> {
        self.snapshot().by_subject(subject).cloned()
    }

    fn snapshot(&self) -> Arc<Credentials> {
        self.current.read().expect("credentials lock").clone()
    }

    /// Reads the roles file again; on error the credentials in force stay.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.roles_file else {
            return Ok(());
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the roles file {}: {e}", path.display()))?;
        let file = Credentials::parse(&text)
            .map_err(|e| format!("the roles file {} is invalid: {e}", path.display()))?;
        let count = file.len();
        let merged = file.merged(&self.shortcut);
        *self.current.write().expect("credentials lock") = Arc::new(merged);
        *self.read_at.lock().expect("read_at lock") = modified;
        tracing::info!(path = %path.display(), credentials = count, "operator credentials loaded");
        Ok(())
    }

    /// Reloads if the file's modification time moved since the last read.
    fn reload_if_changed(&self) {
        let Some(path) = &self.roles_file else {
            return;
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == *self.read_at.lock().expect("read_at lock") {
            return;
        }
        self.reload_or_log();
    }

    fn reload_or_log(&self) {
        if let Err(error) = self.reload() {
            // Remember this version so a bad file is reported once, not at
            // every poll.
            let path = self.roles_file.as_ref().expect("a roles file");
            *self.read_at.lock().expect("read_at lock") =
                std::fs::metadata(path).and_then(|m| m.modified()).ok();
            tracing::error!(%error, "operator credentials NOT reloaded; the previous ones stay in force");
        }
    }

    /// Polls the roles file every `interval` and reloads on SIGHUP, until
    /// `stop`.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        if self.roles_file.is_none() {
            return;
        }
        let mut hangup = hangup_signal();
        let mut poll = tokio::time::interval(interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = poll.tick() => self.reload_if_changed(),
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading operator credentials");
                    self.reload_or_log();
                }
            }
        }
    }
}

#[cfg(unix)]
struct Hangup(Option<tokio::signal::unix::Signal>);

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    Hangup(signal(SignalKind::hangup()).ok())
}

#[cfg(unix)]
impl Hangup {
    async fn recv(&mut self) {
        match &mut self.0 {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(not(unix))]
struct Hangup;

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    Hangup
}

#[cfg(not(unix))]
impl Hangup {
    async fn recv(&mut self) {
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::super::credentials::{Role, hash_line};
    use super::*;

    struct TempFile(PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn temp_file(text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "mc-roles-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    #[test]
    fn a_bad_file_keeps_the_credentials_in_force() {
        let file = temp_file(&format!("dash viewer {}\n", hash_line("v")));
        let operators = Operators::load(Some(file.0.clone()), Some("admin-token")).unwrap();
        assert!(operators.required());
        assert_eq!(operators.by_token("v").unwrap().role, Role::Viewer);
        assert_eq!(operators.by_token("admin-token").unwrap().role, Role::Admin);

        std::fs::write(&file.0, "dash superuser sha256:00\n").unwrap();
        assert!(operators.reload().unwrap_err().contains("line 1"));
        assert_eq!(operators.by_token("v").unwrap().role, Role::Viewer);

        std::fs::write(&file.0, format!("dash admin {}\n", hash_line("v"))).unwrap();
        operators.reload().unwrap();
        assert_eq!(operators.by_token("v").unwrap().role, Role::Admin);
        // The shortcut survives every reload.
        assert_eq!(operators.by_token("admin-token").unwrap().role, Role::Admin);
    }

    #[test]
    fn a_missing_or_invalid_file_stops_the_start() {
        let missing = std::env::temp_dir().join("mc-roles-does-not-exist");
        assert!(Operators::load(Some(missing), None).is_err());
        let bad = temp_file("x y z\n");
        assert!(Operators::load(Some(bad.0.clone()), None).is_err());
    }

    #[test]
    fn without_credentials_nothing_is_required() {
        assert!(!Operators::open().required());
        assert!(Operators::load(None, Some("t")).unwrap().required());
        let empty = temp_file("# nobody yet\n");
        assert!(
            Operators::load(Some(empty.0.clone()), None)
                .unwrap()
                .required()
        );
    }
}
