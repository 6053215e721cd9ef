//! Logging to stderr through `tracing`, with every line passed through the credential redactor: libraries log
//! URLs too (object_store's retry messages), and a presigned URL or a user:password must never reach a log.

use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Collects one log event and writes it, redacted, when dropped.
pub struct RedactedEvent(Vec<u8>);

impl Write for RedactedEvent {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedEvent {
    fn drop(&mut self) {
        let text = lyrics_pipeline::store::redact_secrets(&String::from_utf8_lossy(&self.0));
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

pub struct RedactedStderr;

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedEvent;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedEvent(Vec::with_capacity(256))
    }
}

/// Logs at `default` level unless `LYRICS_LOG` (an `EnvFilter` directive) says otherwise.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LYRICS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactedStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
