//! Fail-stop: a panic anywhere in the daemon ends the process with a non-zero status (so a
//! supervisor restarts it) instead of leaving a half-dead manager that still answers reads.
//! Code that knows a dependency may panic on bad input (redb on a damaged file) catches it
//! with [`catch`] and turns it into an error.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Exit status after a panic (Rust's own for an uncaught panic on the main thread).
pub const PANIC_EXIT_CODE: i32 = 101;

/// Installs the hook: print the panic as usual, then exit the whole process.
pub fn install_panic_hook() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if CATCHING.with(Cell::get) {
            return;
        }
        default(info);
        eprintln!("warren: stopping after the panic above (fail-stop); restart the process");
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

/// Runs `f`, turning a panic inside it into `Err(message)`.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = CATCHING.with(|c| c.replace(true));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    })
}
