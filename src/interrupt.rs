//! Ctrl-C and SIGTERM as a stop request, for long commands that can stop cleanly (the search
//! saves its checkpoint and exits).
//!
//! [`install`] registers handlers for SIGINT and SIGTERM. The first of these signals does not
//! stop the process: it only records a request, which the command polls with
//! [`Interrupt::requested`] (or the free [`requested`]) at a point where it can stop, e.g.
//! after a generation. A second signal ends the process at once, from the handler, with the
//! shell's status for that signal: 130 for SIGINT, 143 for SIGTERM.
//!
//! The handlers are process-wide and stay installed once installed (signal-hook cannot put
//! the default disposition back); installing again returns the same handle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

/// A signal that asks the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, a job scheduler's stop).
    Terminate,
}

impl Signal {
    /// The signal's number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Interrupt => SIGINT,
            Signal::Terminate => SIGTERM,
        }
    }

    /// The exit status a shell reports for a process this signal ended: `128 + number`
    /// (130 for SIGINT, 143 for SIGTERM). A second signal exits with it; a command that stops
    /// on the first may exit with it too.
    pub fn exit_code(self) -> i32 {
        128 + self.number()
    }

    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    fn from_number(n: usize) -> Option<Signal> {
        [Signal::Interrupt, Signal::Terminate]
            .into_iter()
            .find(|s| s.number() as usize == n)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The installed handlers' state: cheap to clone, shared by every clone.
#[derive(Clone, Debug)]
pub struct Interrupt {
    /// Set by the first signal (after `which`).
    pending: Arc<AtomicBool>,
    /// The first signal's number.
    which: Arc<AtomicUsize>,
}

impl Interrupt {
    /// The first stop signal received since [`install`], if any.
    pub fn requested(&self) -> Option<Signal> {
        if self.pending.load(Ordering::SeqCst) {
            Signal::from_number(self.which.load(Ordering::SeqCst))
        } else {
            None
        }
    }

    /// The flag the first signal sets, for code that polls a plain `AtomicBool` (the search's
    /// stop request) and need not know about signals.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.pending.clone()
    }
}

static INSTALLED: OnceLock<Interrupt> = OnceLock::new();
static INSTALLING: Mutex<()> = Mutex::new(());

/// Installs the SIGINT/SIGTERM handlers (once per process; later calls return the same
/// handle). Fails only when the OS refuses a handler.
pub fn install() -> std::io::Result<Interrupt> {
    let _guard = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = INSTALLED.get() {
        return Ok(i.clone());
    }
    let i = Interrupt {
        pending: Arc::new(AtomicBool::new(false)),
        which: Arc::new(AtomicUsize::new(0)),
    };
    for sig in [Signal::Interrupt, Signal::Terminate] {
        let n = sig.number();
        // signal-hook runs a signal's actions in registration order: a signal that finds a
        // request pending exits; otherwise it records itself, then marks the request pending.
        signal_hook::flag::register_conditional_shutdown(n, sig.exit_code(), i.pending.clone())?;
        signal_hook::flag::register_usize(n, i.which.clone(), n as usize)?;
        signal_hook::flag::register(n, i.pending.clone())?;
    }
    let _ = INSTALLED.set(i.clone());
    Ok(i)
}

/// The first stop signal received, if the handlers are installed and one came.
pub fn requested() -> Option<Signal> {
    INSTALLED.get().and_then(Interrupt::requested)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::process::Command;

    /// The test harness's own process must keep its default signal handling, so each case runs
    /// in a child: this test binary again, filtered to `child`, with the case in the
    /// environment.
    fn run_child(case: &str) -> std::process::Output {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "interrupt::tests::child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ECAD_INTERRUPT_CASE", case)
            .output()
            .unwrap()
    }

    /// Runs one case when started by [`run_child`]; does nothing in a normal test run.
    #[test]
    fn child() {
        let Ok(case) = std::env::var("ECAD_INTERRUPT_CASE") else {
            return;
        };
        let (first, second) = match case.as_str() {
            "int" => (SIGINT, SIGINT),
            "term" => (SIGTERM, SIGTERM),
            "int-then-term" => (SIGINT, SIGTERM),
            _ => panic!("unknown case {case}"),
        };
        assert_eq!(requested(), None, "nothing before install");
        let i = install().unwrap();
        assert_eq!(i.requested(), None, "nothing before a signal");
        // installing twice is harmless and shares the state
        let again = install().unwrap();
        signal_hook::low_level::raise(first).unwrap();
        let got = i.requested().expect("the first signal is recorded");
        assert_eq!(got.number(), first);
        assert_eq!(again.requested(), Some(got));
        assert_eq!(requested(), Some(got));
        println!("FIRST-HANDLED {got}");
        signal_hook::low_level::raise(second).unwrap();
        // not reached: the second signal exits from its handler
        println!("SURVIVED-SECOND");
    }

    fn check(case: &str, first: &str, code: i32) {
        let out = run_child(case);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("FIRST-HANDLED {first}")),
            "{case}: the first signal did not just set the request:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains("SURVIVED-SECOND"), "{case}: {stdout}");
        assert_eq!(out.status.code(), Some(code), "{case}: {stdout}");
    }

    #[test]
    fn first_sigint_requests_a_stop_second_exits_130() {
        check("int", "SIGINT", 130);
    }

    #[test]
    fn first_sigterm_requests_a_stop_second_exits_143() {
        check("term", "SIGTERM", 143);
    }

    #[test]
    fn the_second_signal_decides_the_exit_code() {
        check("int-then-term", "SIGINT", 143);
    }

    #[test]
    fn codes_and_names() {
        assert_eq!(Signal::Interrupt.exit_code(), 130);
        assert_eq!(Signal::Terminate.exit_code(), 143);
        assert_eq!(Signal::Terminate.to_string(), "SIGTERM");
    }
}
