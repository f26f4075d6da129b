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
/// `rq worker --log-format '%(asctime)s %(message)s'`: a Python logging format, with its
/// `--date-format`; replaces the text format when set.
static TEMPLATE: Mutex<Option<Template>> = Mutex::new(None);

struct Logger;

/// Installs the logger (once per process; later calls only change the level and format).
pub fn init(level: LevelFilter, format: LogFormat) {
    *FORMAT.lock().unwrap_or_else(|e| e.into_inner()) = format;
    let _ = log::set_logger(&Logger);
    log::set_max_level(level);
}

/// Formats text lines with a Python logging format string from now on.
pub fn set_template(template: Template) {
    *TEMPLATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(template);
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
        let template = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let line = match (format, template) {
            (LogFormat::Json, _) => json_line(&ctx, record),
            (LogFormat::Text, Some(t)) => t.line(&ctx, record),
            (LogFormat::Text, None) => text_line(&ctx, record),
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

/// A Python `logging` format string (`%(asctime)s %(levelname)-8s %(message)s`) and its date
/// format, as `rq worker --log-format/--date-format` take them.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    date_format: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// A `%(name)spec` field: its name, left-justified, width.
    Field(Field, bool, usize),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Asctime,
    Message,
    Levelname,
    Levelno,
    Name,
    Process,
    Created,
    Msecs,
}

impl Template {
    /// RQ's defaults: `%(asctime)s %(message)s` and `%H:%M:%S`.
    pub const DEFAULT_DATE_FORMAT: &'static str = "%H:%M:%S";

    /// Parses a format; an unknown field or a malformed spec is an error naming it.
    pub fn parse(format: &str, date_format: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = format;
        while let Some(i) = rest.find('%') {
            parts.push(Part::Text(rest[..i].to_string()));
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                parts.push(Part::Text("%".into()));
                rest = r;
                continue;
            }
            let bad = || {
                format!(
                    "--log-format {format:?}: write fields as %(name)s, e.g. '%(asctime)s %(levelname)s %(message)s'"
                )
            };
            let r = rest.strip_prefix('(').ok_or_else(bad)?;
            let close = r.find(')').ok_or_else(bad)?;
            let name = &r[..close];
            let spec = &r[close + 1..];
            let conv = spec
                .find(|c: char| c.is_ascii_alphabetic())
                .ok_or_else(bad)?;
            let flags = &spec[..conv];
            let left = flags.starts_with('-');
            let width = flags
                .trim_start_matches('-')
                .split('.')
                .next()
                .unwrap_or_default()
                .parse()
                .unwrap_or(0);
            let field = match name {
                "asctime" => Field::Asctime,
                "message" => Field::Message,
                "levelname" => Field::Levelname,
                "levelno" => Field::Levelno,
                "name" => Field::Name,
                "process" => Field::Process,
                "created" => Field::Created,
                "msecs" => Field::Msecs,
                other => {
                    return Err(format!(
                        "--log-format {format:?}: rqworker does not know the field %({other})s; use asctime, message, levelname, levelno, name, process, created or msecs"
                    ));
                }
            };
            parts.push(Part::Field(field, left, width));
            rest = &spec[conv + 1..];
        }
        parts.push(Part::Text(rest.to_string()));
        Ok(Template {
            parts,
            date_format: date_format.to_string(),
        })
    }

    fn line(&self, ctx: &LogContext, record: &Record) -> String {
        let now = SystemTime::now();
        let since = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut out = String::new();
        for part in &self.parts {
            let (field, left, width) = match part {
                Part::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Part::Field(f, l, w) => (*f, *l, *w),
            };
            let value = match field {
                Field::Asctime => strftime(&self.date_format, since.as_secs() as i64),
                Field::Message => record.args().to_string(),
                Field::Levelname => level_name(record.level()).to_string(),
                Field::Levelno => match record.level() {
                    Level::Error => "40",
                    Level::Warn => "30",
                    Level::Info => "20",
                    Level::Debug | Level::Trace => "10",
                }
                .to_string(),
                Field::Name => match &ctx.pool {
                    Some(pool) => format!("{pool}/{}", ctx.name),
                    None => ctx.name.clone(),
                },
                Field::Process => std::process::id().to_string(),
                Field::Created => format!("{:.6}", since.as_secs_f64()),
                Field::Msecs => format!("{:03}", since.subsec_millis()),
            };
            if left {
                out.push_str(&format!("{value:<width$}"));
            } else {
                out.push_str(&format!("{value:>width$}"));
            }
        }
        out.push('\n');
        out
    }
}

/// Local time `secs` in `format`, as C's (and Python's) `strftime`.
fn strftime(format: &str, secs: i64) -> String {
    use nix::libc;
    let Ok(format) = std::ffi::CString::new(format) else {
        return String::new();
    };
    let mut buf = [0u8; 256];
    // SAFETY: localtime_r writes into the `tm` we own; strftime writes at most `buf.len()`
    // bytes into `buf` and returns how many it wrote (0 when it did not fit).
    let n = unsafe {
        let t: libc::time_t = secs;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return String::new();
        }
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), format.as_ptr(), &tm)
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_log_formats() {
        let t = Template::parse("%(asctime)s %(levelname)-8s|%(message)s %%", "%Y").unwrap();
        let record = Record::builder()
            .args(format_args!("hello"))
            .level(Level::Warn)
            .build();
        let ctx = LogContext {
            pool: None,
            name: "w".into(),
        };
        let line = t.line(&ctx, &record);
        assert!(line.ends_with(" WARNING |hello %\n"), "{line:?}");
        assert_eq!(line.len(), "2026 WARNING |hello %\n".len(), "{line:?}");
        assert!(
            Template::parse("%(funcName)s", "%H")
                .unwrap_err()
                .contains("funcName")
        );
        assert!(Template::parse("%s", "%H").is_err());
    }
}
