//! What a job's `func_name` runs: native Rust functions registered through the library,
//! command handlers declared in the config, and the `rq.builtin.*` functions.

pub mod builtin;

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::config::HandlerSpec;

/// The job as a handler sees it.
#[derive(Debug, Clone)]
pub struct JobCall {
    pub id: String,
    pub func_name: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    /// The queue the job came from.
    pub origin: String,
    pub description: String,
    pub meta: Value,
    pub worker_name: String,
    pub execution_id: String,
}

impl JobCall {
    /// The JSON document command handlers read on stdin.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "func_name": self.func_name,
            "args": self.args,
            "kwargs": self.kwargs,
            "origin": self.origin,
            "description": self.description,
            "meta": self.meta,
        })
    }
}

/// A native handler's failure. Shown in `exc_string` as `<kind>: <message>`, the last line
/// Python users know from a traceback.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    pub kind: String,
    pub message: String,
}

impl JobError {
    pub fn new(message: impl Into<String>) -> JobError {
        JobError {
            kind: "JobError".into(),
            message: message.into(),
        }
    }

    /// An error with a Python-style exception name, e.g. `ValueError`.
    pub fn with_kind(kind: impl Into<String>, message: impl Into<String>) -> JobError {
        JobError {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl<E: std::error::Error> From<E> for JobError {
    fn from(e: E) -> JobError {
        JobError::new(e.to_string())
    }
}

/// A native handler: runs in the forked work horse.
pub type NativeFn = dyn Fn(&JobCall) -> Result<Value, JobError>;

/// How a function name is executed.
#[derive(Clone)]
pub enum Handler {
    Native(Rc<NativeFn>),
    Command(Rc<HandlerSpec>),
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handler::Native(_) => f.write_str("Handler::Native"),
            Handler::Command(spec) => write!(f, "Handler::Command({:?})", spec.command),
        }
    }
}

/// Function names to handlers. Exact names win over globs; among globs the longest
/// pattern (the most specific) wins.
#[derive(Default, Clone)]
pub struct Registry {
    exact: HashMap<String, Handler>,
    globs: Vec<(String, Handler)>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers a native function under an exact name (or a `*` glob).
    pub fn register<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&JobCall) -> Result<Value, JobError> + 'static,
    {
        self.insert(name, Handler::Native(Rc::new(f)));
        self
    }

    pub fn add_command(&mut self, spec: HandlerSpec) {
        let name = spec.name.clone();
        self.insert(&name, Handler::Command(Rc::new(spec)));
    }

    pub fn add_builtins(&mut self) {
        builtin::register(self);
    }

    fn insert(&mut self, name: &str, handler: Handler) {
        if name.contains('*') || name.contains('?') {
            self.globs.retain(|(p, _)| p != name);
            self.globs.push((name.to_string(), handler));
            self.globs.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        } else {
            self.exact.insert(name.to_string(), handler);
        }
    }

    pub fn lookup(&self, func_name: &str) -> Option<&Handler> {
        self.exact.get(func_name).or_else(|| {
            self.globs
                .iter()
                .find(|(p, _)| glob_match(p, func_name))
                .map(|(_, h)| h)
        })
    }

    /// Every registered name and pattern, sorted, for "unknown function" messages.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .exact
            .keys()
            .cloned()
            .chain(self.globs.iter().map(|(p, _)| p.clone()))
            .collect();
        names.sort();
        names
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    /// The failure text for a job naming a function nobody handles.
    pub fn unknown_function_message(&self, func_name: &str) -> String {
        let known = self.names();
        let known = if known.is_empty() {
            "none are configured".to_string()
        } else {
            known.join(", ")
        };
        format!(
            "UnknownFunction: no handler for function {func_name:?} on this worker; known handlers: {known}. \
             Declare it as [handlers.\"{func_name}\"] in the config, register it in a native worker, \
             or enable the built-ins with --builtin-handlers"
        )
    }
}

/// Shell-style matching of `*` (any run of characters) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("tasks.*", "tasks.send"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("tasks.*", "other.send"));
        assert!(glob_match("t*.s*d", "tasks.send"));
    }

    #[test]
    fn exact_wins_then_longest_glob() {
        let mut r = Registry::new();
        r.register("tasks.*", |_| Ok(Value::from(1)));
        r.register("tasks.mail.*", |_| Ok(Value::from(2)));
        r.register("tasks.mail.send", |_| Ok(Value::from(3)));
        let call = |name: &str| {
            let Some(Handler::Native(f)) = r.lookup(name) else {
                panic!("no handler for {name}")
            };
            f(&JobCall {
                id: String::new(),
                func_name: name.into(),
                args: vec![],
                kwargs: Map::new(),
                origin: String::new(),
                description: String::new(),
                meta: Value::Null,
                worker_name: String::new(),
                execution_id: String::new(),
            })
            .unwrap()
        };
        assert_eq!(call("tasks.mail.send"), Value::from(3));
        assert_eq!(call("tasks.mail.other"), Value::from(2));
        assert_eq!(call("tasks.x"), Value::from(1));
        assert!(r.lookup("other").is_none());
        assert!(
            r.unknown_function_message("other")
                .contains("tasks.mail.send")
        );
    }
}
