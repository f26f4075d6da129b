//! `rq-supervisor`'s command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::EXIT_USAGE;

#[derive(Debug, Parser)]
#[command(
    name = "rq-supervisor",
    version,
    about = "Run pools of RQ workers (rqworker) from a pool.toml: restart crashed workers with \
             backoff, clean up after them in Redis, recycle unhealthy ones, reload on SIGHUP, \
             and shut down in two stages.",
    after_help = "Signals: INT/TERM once = warm shutdown (every worker finishes its job); twice \
                  or after warm_timeout = cold (workers kill their horses, jobs fail); \
                  cold_timeout later every process group is SIGKILLed. HUP reloads pool.toml, \
                  TTIN/TTOU add/remove a worker in the first pool (by name).\n\
                  Exit codes: 0 every worker stopped warm (or every burst pool finished), \
                  1 something was escalated or killed, or a runtime error, 2 bad usage or config."
)]
pub struct Cli {
    /// The pool file (see supervisor.toml.example).
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the file and print the effective configuration, including the shutdown
    /// budget to give systemd (TimeoutStopSec) or Kubernetes (terminationGracePeriodSeconds).
    Check,
}

impl Cli {
    /// Parses the process's arguments into the pool file's absolute path and the command.
    /// `Err` is what `main` returns at once: `Ok(())` after `--help` or `--version`, else
    /// the usage status, with the message already printed.
    pub fn from_env() -> Result<(PathBuf, Option<Command>), Result<(), i32>> {
        let cli = match Cli::try_parse() {
            Ok(cli) => cli,
            Err(e) => {
                let _ = e.print();
                return Err(if e.use_stderr() {
                    Err(EXIT_USAGE)
                } else {
                    Ok(())
                });
            }
        };
        let Some(path) = cli.config else {
            eprintln!(
                "rq-supervisor: no config file; pass -c pool.toml (supervisor.toml.example shows every key)"
            );
            return Err(Err(EXIT_USAGE));
        };
        Ok((std::path::absolute(&path).unwrap_or(path), cli.command))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_goes_before_or_after_the_command() {
        for argv in [
            ["rq-supervisor", "-c", "pool.toml", "check"],
            ["rq-supervisor", "check", "--config", "pool.toml"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert_eq!(
                cli.config.as_deref(),
                Some(std::path::Path::new("pool.toml"))
            );
            assert!(matches!(cli.command, Some(Command::Check)));
        }
        let cli = Cli::try_parse_from(["rq-supervisor", "-c", "pool.toml"]).unwrap();
        assert!(cli.command.is_none());
    }
}
