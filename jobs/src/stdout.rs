//! Standard output, where the subcommands print their results. A reader that goes away early
//! (`lyrics-prep plan | head`) ends the command quietly with status 0, as it ends `ls`: Rust ignores SIGPIPE, so
//! a write to a closed pipe fails with `BrokenPipe` (and `println!` would panic). Writes through [`lock`] note
//! that failure, the command stops at the error it returns, and `main` ends it as a success when [`closed`] says
//! the error came from there, whatever wrapped it on the way (CSV, JSON and Arrow writers all do).

use std::io::{self, StdoutLock, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether a write to standard output found it closed by its reader.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Standard output, locked for this writer's lifetime.
pub fn lock() -> Stdout {
    Stdout(io::stdout().lock())
}

pub struct Stdout(StdoutLock<'static>);

impl Stdout {
    fn noted<T>(result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result
            && e.kind() == io::ErrorKind::BrokenPipe
        {
            CLOSED.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Self::noted(self.0.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Self::noted(self.0.flush())
    }
}
