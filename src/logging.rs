//! One logger for every process role. Each record is formatted into one buffer and written
//! with a single `write(2)`, so lines from a supervisor and its workers sharing a terminal
//! never interleave mid-line. Every line names the process: pool and worker for workers,
//! `supervisor` for the supervisor.

use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogFormat;

/// Who is logging; read at format time so a forked horse or a renamed worker shows the
/// right name without re-installing the logger (which `log` allows only once).
#[derive(Debug, Clone, Default)]
pub struct LogContext {
    pub pool: Option<String>,
    pub name: String,
}

static CONTEXT: Mutex<Option<LogContext>> = Mutex::new(None);
static FORMAT: Mutex<LogFormat> = Mutex::new(LogFormat::Text);

struct Logger;

/// Installs the logger (once per process; later calls only change the level and format).
pub fn init(level: LevelFilter, format: LogFormat) {
    *FORMAT.lock().unwrap_or_else(|e| e.into_inner()) = format;
    let _ = log::set_logger(&Logger);
    log::set_max_level(level);
}

pub fn set_context(ctx: LogContext) {
    *CONTEXT.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx);
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ctx = CONTEXT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        let format = *FORMAT.lock().unwrap_or_else(|e| e.into_inner());
        let line = match format {
            LogFormat::Text => text_line(&ctx, record),
            LogFormat::Json => json_line(&ctx, record),
        };
        // One write for the whole line; a failed log write has nowhere to be reported.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "ERROR",
        Level::Warn => "WARNING",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    }
}

fn text_line(ctx: &LogContext, record: &Record) -> String {
    let ts = humantime::format_rfc3339_millis(SystemTime::now());
    let who = match &ctx.pool {
        Some(pool) => format!("{pool}/{}", ctx.name),
        None => ctx.name.clone(),
    };
    let level = match record.level() {
        Level::Info => String::new(),
        l => format!("{}: ", level_name(l)),
    };
    format!("{ts} [{who}] {level}{}\n", record.args())
}

fn json_line(ctx: &LogContext, record: &Record) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert(
        "ts".into(),
        humantime::format_rfc3339_millis(SystemTime::now())
            .to_string()
            .into(),
    );
    obj.insert("level".into(), level_name(record.level()).into());
    if let Some(pool) = &ctx.pool {
        obj.insert("pool".into(), pool.clone().into());
    }
    obj.insert("name".into(), ctx.name.clone().into());
    obj.insert("pid".into(), std::process::id().into());
    obj.insert("msg".into(), record.args().to_string().into());
    let mut line = serde_json::Value::Object(obj).to_string();
    line.push('\n');
    line
}

/// Shortens text for a log line, marking the cut.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}
