//! What a job's `func_name` runs: the registry of handlers (native Rust functions registered
//! through the library, command handlers declared in the config, and the `rq.builtin.*`
//! functions). How each kind runs a job is in [`crate::execution`].

pub mod builtin;

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::Value;

use crate::config::HandlerSpec;
use crate::execution::{CommandHandler, Handler, JobFailure, NativeHandler};
pub use crate::execution::{JobCall, JobError};
use crate::protocol::payload::{self, Call, PayloadError};

/// Function names to handlers. Exact names win over globs; among globs the longest
/// pattern (the most specific) wins.
#[derive(Default, Clone)]
pub struct Registry {
    exact: HashMap<String, Rc<dyn Handler>>,
    globs: Vec<(String, Rc<dyn Handler>)>,
    /// What runs a name nothing declares (Python, with the `python` feature).
    fallback: Option<Rc<dyn Handler>>,
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
        self.insert(name, Rc::new(NativeHandler(Rc::new(f))));
        self
    }

    pub fn add_command(&mut self, spec: HandlerSpec) {
        let name = spec.name.clone();
        self.insert(&name, Rc::new(CommandHandler(spec)));
    }

    pub fn add_builtins(&mut self) {
        builtin::register(self);
    }

    /// Runs every job whose function no declared handler runs, and every payload the worker
    /// cannot decode, when that handler reads such payloads.
    pub fn set_fallback(&mut self, handler: Rc<dyn Handler>) {
        self.fallback = Some(handler);
    }

    /// The handler for a job, from its payload `data` decoded (or why it could not be).
    /// Declared handlers win; the fallback takes the rest, and the payloads it can read that
    /// the worker cannot.
    pub fn resolve(
        &self,
        data: &[u8],
        decoded: &Result<Call, PayloadError>,
    ) -> Result<Rc<dyn Handler>, JobFailure> {
        let fallback = self.fallback.as_ref();
        match decoded {
            Ok(call) => match self.lookup(&call.func_name).or(fallback) {
                Some(h) => Ok(Rc::clone(h)),
                None => Err(JobFailure::UnknownFunction {
                    func_name: call.func_name.clone(),
                    known: self.names(),
                }),
            },
            // JSON with NaN or Infinity: Python reads it, but a declared (native or command)
            // handler could not be given those numbers.
            Err(PayloadError::NonFiniteNumber)
                if fallback.is_some()
                    && payload::peek_func_name(data).is_some_and(|f| self.lookup(&f).is_none()) =>
            {
                Ok(Rc::clone(fallback.expect("checked")))
            }
            Err(e) => match fallback {
                Some(h) if h.reads_payload(e) => Ok(Rc::clone(h)),
                _ => Err(JobFailure::Deserialization(e.clone())),
            },
        }
    }

    fn insert(&mut self, name: &str, handler: Rc<dyn Handler>) {
        if name.contains('*') || name.contains('?') {
            self.globs.retain(|(p, _)| p != name);
            self.globs.push((name.to_string(), handler));
            self.globs.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        } else {
            self.exact.insert(name.to_string(), handler);
        }
    }

    pub fn lookup(&self, func_name: &str) -> Option<&Rc<dyn Handler>> {
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

    /// Tells every handler the worker has no job to run next ([`Handler::idle`]).
    pub fn idle(&self) {
        let handlers = self.exact.values().chain(self.globs.iter().map(|(_, h)| h));
        for h in handlers.chain(self.fallback.iter()) {
            h.idle();
        }
    }

    /// Nothing would run any job: no declared handler and no fallback.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty() && self.fallback.is_none()
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
        let command = |name: &str, program: &str| HandlerSpec {
            name: name.into(),
            command: vec![program.into()],
            timeout: None,
            cwd: None,
            env: Default::default(),
        };
        r.add_command(command("tasks.*", "/one"));
        r.add_command(command("tasks.mail.*", "/two"));
        r.add_command(command("tasks.mail.send", "/three"));
        r.register("native.*", |_| Ok(Value::from(1)));
        let found = |name: &str| r.lookup(name).map(|h| h.describe());
        assert_eq!(found("tasks.mail.send").as_deref(), Some("command /three"));
        assert_eq!(found("tasks.mail.other").as_deref(), Some("command /two"));
        assert_eq!(found("tasks.x").as_deref(), Some("command /one"));
        assert_eq!(found("native.f").as_deref(), Some("native function"));
        assert!(r.lookup("other").is_none());
    }
}
