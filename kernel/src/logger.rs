//! The `log` backend: one console line per record, stamped with the generic timer and the CPU.
//!
//! Format: `[   12.345678] C1 INFO  smmu: message`. The formatting is pure (host-tested); the
//! target backend writes each line under the console lock so lines never interleave.

use core::fmt::{self, Write};
use log::{Level, LevelFilter};

/// Write one log line (without the trailing newline) to `out`.
pub fn format_line(
    out: &mut impl Write,
    time_ns: u64,
    cpu: usize,
    level: Level,
    target: &str,
    args: fmt::Arguments<'_>,
) -> fmt::Result {
    let secs = time_ns / 1_000_000_000;
    let micros = (time_ns % 1_000_000_000) / 1_000;
    // Module paths are long and mostly start with the crate name; keep the informative tail.
    let target = target.strip_prefix("kernel::").unwrap_or(target);
    write!(
        out,
        "[{secs:>5}.{micros:06}] C{cpu} {:<5} {target}: {args}",
        level.as_str()
    )
}

/// Parse a `log=` bootarg value.
pub fn parse_level(value: &str) -> Option<LevelFilter> {
    match value {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

#[cfg(target_os = "none")]
mod backend {
    use super::format_line;
    use crate::{console, cpu, time};
    use core::fmt::Write;

    struct ConsoleLogger;

    impl log::Log for ConsoleLogger {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::max_level()
        }

        fn log(&self, record: &log::Record<'_>) {
            if !self.enabled(record.metadata()) {
                return;
            }
            let mut guard = console::lock();
            let _ = format_line(
                &mut guard,
                time::now_ns(),
                cpu::index(),
                record.level(),
                record.target(),
                *record.args(),
            );
            let _ = guard.write_str("\n");
        }

        fn flush(&self) {}
    }

    static LOGGER: ConsoleLogger = ConsoleLogger;

    /// Install the console logger with the given maximum level.
    pub fn init(level: log::LevelFilter) {
        // A second call (there is none) would only fail to replace the logger.
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(level);
    }
}

#[cfg(target_os = "none")]
pub use backend::init;

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    #[test]
    fn formats_time_cpu_level_and_short_target() {
        let mut s = String::new();
        format_line(
            &mut s,
            12_345_678_901,
            1,
            Level::Info,
            "kernel::mm::flush",
            format_args!("flushed {} pages", 3),
        )
        .unwrap();
        assert_eq!(s, "[   12.345678] C1 INFO  mm::flush: flushed 3 pages");
    }

    #[test]
    fn parses_levels() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("loud"), None);
    }
}
