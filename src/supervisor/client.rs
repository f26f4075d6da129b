//! The control commands' client side: `rq-supervisor -c FILE status|scale|pause|resume|
//! restart|reload|stop` find the running supervisor's socket from the pool file's path (or
//! its `control_socket`), send one request and print the answer. Exit status: 0 done, 1 no
//! supervisor (or it could not), 2 a bad pool name or count.

use std::path::{Path, PathBuf};

use super::cli::Command;
use super::control::{self, ClientError, Request};
use super::{EXIT_FAILURE, EXIT_USAGE};

/// `[supervisor] control_socket` read leniently: only that key matters here, so a file
/// being edited (or one this user cannot read) still finds the default socket.
fn configured_socket(config: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(config).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let path = table.get("supervisor")?.get("control_socket")?.as_str()?;
    let dir = config.parent().unwrap_or(Path::new("."));
    Some(std::path::absolute(dir.join(path)).unwrap_or_else(|_| dir.join(path)))
}

fn request(command: Command) -> Result<Request, String> {
    Ok(match command {
        Command::Check => unreachable!("check is not a control command"),
        Command::Status { .. } => Request::Status,
        Command::Scale { pool, workers } => {
            let n = workers.trim().parse::<u32>().map_err(|_| {
                format!(
                    "scale {pool} {workers:?}: not a worker count; write a whole number from 1 to 10000"
                )
            })?;
            Request::Scale { pool, workers: n }
        }
        Command::Pause { pool } => Request::Pause { pool },
        Command::Resume { pool } => Request::Resume { pool },
        Command::Restart { pool } => Request::Restart { pool },
        Command::Reload => Request::Reload,
        Command::Stop { cold } => Request::Stop { cold },
    })
}

/// Runs one control command against the supervisor of `config`.
pub fn run(config: &Path, command: Command) -> Result<(), i32> {
    let json = matches!(command, Command::Status { json: true });
    let request = request(command).map_err(|e| {
        eprintln!("rq-supervisor: {e}");
        EXIT_USAGE
    })?;
    let socket = control::client_socket(config, configured_socket(config));
    let stop = matches!(request, Request::Stop { .. });
    let reply = match control::call(&socket, &request, stop) {
        Ok(r) => r,
        Err(ClientError::NotRunning(e)) => {
            eprintln!(
                "rq-supervisor: {e}; start it with `rq-supervisor -c {}`",
                config.display()
            );
            return Err(EXIT_FAILURE);
        }
        Err(ClientError::Failed(e)) => {
            eprintln!("rq-supervisor: {e}");
            return Err(EXIT_FAILURE);
        }
    };
    if reply.code != 0 {
        eprintln!("rq-supervisor: {}", reply.text);
        return Err(reply.code);
    }
    match (&reply.status, json) {
        (Some(status), true) => println!(
            "{}",
            serde_json::to_string_pretty(status).expect("a status serializes")
        ),
        _ if !reply.text.is_empty() => println!("{}", reply.text.trim_end()),
        _ => {}
    }
    if stop {
        println!("rq-supervisor has exited");
    }
    Ok(())
}
