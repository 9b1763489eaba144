//! The log lines of one plugin's VMs (or native workers), kept for the embedder.

use std::collections::VecDeque;
use std::sync::Mutex;

use proxy_wasm_host::abi::v0_2_1::types::LogLevel;
use proxy_wasm_host::abi::v0_2_1::{LogContext, LogSink};

use crate::lock;

#[derive(Default)]
pub(crate) struct LogBuffer {
    lines: Mutex<VecDeque<(LogLevel, String)>>,
}

const KEPT_LOG_LINES: usize = 256;

/// The level below which lines are dropped, as the VMs are configured (`with_log_level`).
pub(crate) const LOG_LEVEL: LogLevel = LogLevel::Info;

impl LogBuffer {
    pub(crate) fn last_at_least(&self, level: LogLevel) -> Option<String> {
        lock(&self.lines)
            .iter()
            .rev()
            .find(|(l, _)| *l as u32 >= level as u32)
            .map(|(_, line)| line.clone())
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        lock(&self.lines).iter().map(|(_, l)| l.clone()).collect()
    }

    /// Keeps `line` (bounded); warnings and worse also go to stderr with `MESHGATE_FILTER_LOG`.
    pub(crate) fn push(&self, level: LogLevel, line: String) {
        if (level as u32) < LOG_LEVEL as u32 {
            return;
        }
        if level as u32 >= LogLevel::Warn as u32
            && std::env::var_os("MESHGATE_FILTER_LOG").is_some()
        {
            eprintln!("{line}");
        }
        let mut lines = lock(&self.lines);
        if lines.len() == KEPT_LOG_LINES {
            lines.pop_front();
        }
        lines.push_back((level, line));
    }
}

impl LogSink for LogBuffer {
    fn log(&self, _: LogContext<'_>, level: LogLevel, message: &[u8]) {
        self.push(level, String::from_utf8_lossy(message).into_owned());
    }
}
