//! How the Lua scripts are built and sent. Each script lives in its own `.lua` file beside the
//! typed wrapper that builds its ARGV and reads its reply; every script is prefixed with the
//! key names of [`keys::lua_prelude`], and the ones that write with an ACL check.

use redis::{Connection, Script};

use crate::protocol::keys;

/// A script with the key-name prelude in front.
pub(super) fn plain(src: &str) -> Script {
    Script::new(&format!("{}{src}", keys::lua_prelude()))
}

/// A script with the key-name prelude and, before it, a permission check: every command the
/// script calls is checked with `redis.acl_check_cmd` (Redis 7+) before anything is written,
/// and a missing one fails the script with `NOPERM ... the 'xadd' command ...`. Without it, a
/// Redis ACL user lacking one permission would see the script stop halfway (scripts are not
/// rolled back on error), leaving a job half-settled, and Redis's own message would not say
/// which command was refused. Each command is checked with seven `rq:acl-check` arguments:
/// enough for every command's arity, because Redis (before the fix of redis/redis#14843) reads
/// past the arguments it is given when they are fewer than the command needs and the user has
/// key patterns (a crash, seen with 7.0.15); every argument is a key under `rq:`, so commands
/// that take many keys pass the documented `~rq:*` too.
pub(super) fn guarded(name: &str, src: &str) -> Script {
    Script::new(&guard(name, &format!("{}{src}", keys::lua_prelude())))
}

/// `src` with the ACL check of [`guarded`] in front.
pub fn guard(name: &str, src: &str) -> String {
    let mut commands: Vec<String> = Vec::new();
    for marker in ["redis.call('", "redis.pcall('"] {
        let mut rest = src;
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            let cmd: String = rest.chars().take_while(|c| *c != '\'').collect();
            commands.push(cmd.to_ascii_uppercase());
        }
    }
    commands.sort();
    commands.dedup();
    let list: Vec<String> = commands.iter().map(|c| format!("'{c}'")).collect();
    format!(
        "if redis.acl_check_cmd then\n  local k = '{}'\n  for _, c in ipairs({{{}}}) do\n    if not redis.acl_check_cmd(c, k, k, k, k, k, k, k) then\n      return redis.error_reply(\"NOPERM this user has no permissions to run the '\" .. string.lower(c) .. \"' command (checked by rqworker's {name} script before writing anything)\")\n    end\n  end\nend\n{src}",
        keys::ACL_CHECK,
        list.join(", ")
    )
}

/// `EVALSHA <sha> 0`: for the scripts that take their keys from ARGV (names built inside).
pub(super) fn evalsha(script: &Script) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(0);
    cmd
}

pub(super) fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Runs a script's EVALSHA, loading the script once if Redis does not know it yet.
pub(super) fn run<T: redis::FromRedisValue>(
    con: &mut Connection,
    script: &Script,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    match cmd.query(con) {
        Err(e) if is_noscript(&e) => {
            script.load(con)?;
            cmd.query(con)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    /// Every key name a script uses comes from the prelude: no script spells one itself.
    #[test]
    fn scripts_spell_no_key_names() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "lua") {
                seen += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("--").next().unwrap_or_default();
                    assert!(
                        !code.contains("'rq:") && !code.contains("\"rq:"),
                        "{}:{}: a key name spelled in Lua; use the prelude's KEY_* names: {line}",
                        path.display(),
                        n + 1
                    );
                }
            }
        }
        assert!(seen >= 10, "found only {seen} scripts in {}", dir.display());
    }
}
