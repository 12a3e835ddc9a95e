//! Running commands and checking their output.

use std::path::Path;
use std::process::{Command, Output};

/// The output of a finished command, with helpers for assertions.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Runs `cmd` to completion.
    pub fn of(cmd: &mut Command) -> Run {
        let out: Output = cmd.output().unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!(
                    "{} is not installed: ./tests/run.sh installs it as root, with the \
                     Debian packages of tests/apt-packages.txt (running {cmd:?})",
                    cmd.get_program().to_string_lossy()
                )
            }
            panic!("cannot run {cmd:?}: {e}")
        });
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn code(&self, want: i32) -> &Run {
        assert_eq!(
            self.code, want,
            "exit code {} (wanted {want})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Asserts success.
    #[track_caller]
    pub fn ok(&self) -> &Run {
        self.code(0)
    }

    /// Asserts that stderr contains `text`.
    #[track_caller]
    pub fn err_has(&self, text: &str) -> &Run {
        has("stderr", &self.stderr, text);
        self
    }

    /// Asserts that stdout contains `text`.
    #[track_caller]
    pub fn out_has(&self, text: &str) -> &Run {
        has("stdout", &self.stdout, text);
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs a program with arguments (no shell), returning its output.
pub fn run(program: impl AsRef<Path>, args: &[&str]) -> Run {
    Run::of(Command::new(program.as_ref()).args(args))
}

/// Runs a program and panics unless it succeeds; for setup steps.
#[track_caller]
pub fn must(program: &str, args: &[&str]) -> Run {
    let r = run(program, args);
    assert_eq!(
        r.code, 0,
        "{program} {args:?} failed: {}{}",
        r.stdout, r.stderr
    );
    r
}

/// Asserts that `stream` (named `name`) contains `text`, showing it when not.
#[track_caller]
fn has(name: &str, stream: &str, text: &str) {
    assert!(stream.contains(text), "{name} lacks {text:?}:\n{stream}");
}
