//! The engine's lock: handed to waiters, poisoned by a panic.
//!
//! Work done a slice at a time (a `/metrics` count of the fleet, a lease
//! checkpoint's drain) lets go of the lock between slices and takes it back
//! at once. std's mutex lets the thread that let go take it back before a
//! woken waiter runs, so every heartbeat that came meanwhile waited out all
//! the slices: about 150 ms during a scrape at 1,000,000 agents
//! (`scripts/storm-bench`, BENCHMARKS.md). parking_lot's mutex hands the
//! lock to the next waiter after any hold over 1 ms, and otherwise on
//! average every half millisecond.
//!
//! A panic while it is held poisons it, as std's does: the engine may be
//! half changed, and every later `lock` panics rather than serve it.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::Engine;

pub struct EngineLock {
    engine: parking_lot::Mutex<Engine>,
    poisoned: AtomicBool,
}

impl EngineLock {
    pub fn new(engine: Engine) -> Self {
        EngineLock {
            engine: parking_lot::Mutex::new(engine),
            poisoned: AtomicBool::new(false),
        }
    }

    /// The engine, once no one else holds it.
    ///
    /// # Panics
    /// If a holder panicked before.
    pub fn lock(&self) -> EngineGuard<'_> {
        let engine = self.engine.lock();
        assert!(
            !self.poisoned.load(Ordering::Acquire),
            "engine lock poisoned"
        );
        EngineGuard {
            engine,
            poisoned: &self.poisoned,
        }
    }
}

pub struct EngineGuard<'a> {
    engine: parking_lot::MutexGuard<'a, Engine>,
    poisoned: &'a AtomicBool,
}

impl Deref for EngineGuard<'_> {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl DerefMut for EngineGuard<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
}

impl Drop for EngineGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.poisoned.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Policy;

    fn lock() -> EngineLock {
        EngineLock::new(Engine::new(Policy::default()))
    }

    #[test]
    fn a_panic_while_held_poisons_it() {
        let engine = lock();
        let _ = engine.lock().revision();
        let held = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = engine.lock();
            panic!("the engine is half changed");
        }));
        assert!(held.is_err());
        let after = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = engine.lock().revision();
        }));
        assert!(after.is_err(), "a poisoned engine must not be served");
    }
}
