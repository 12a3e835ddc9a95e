//! `kloigos-gen OUTDIR [--date YYYY-MM-DD]`: writes the man pages and shell
//! completions of `kloigos`, generated from the clap definitions the binary
//! itself parses with (crate `kloigos-cli`, module `args`):
//!
//! - `OUTDIR/man/kloigos.1` and one page per subcommand
//!   (`kloigos-alloc.1`, `kloigos-admin-add-node.1`, ...), by clap_mangen;
//! - `OUTDIR/completions/kloigos.bash`, `_kloigos` (zsh) and `kloigos.fish`,
//!   by clap_complete (the names `install.sh` and `packaging/deb/build.sh`
//!   look for).
//!
//! A build tool: it is not installed, and lives in its own crate so that
//! the setuid `kloigos` binary does not link clap_mangen or clap_complete.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;
use kloigos_cli::args::Cli;

const USAGE: &str = "usage: kloigos-gen OUTDIR [--date YYYY-MM-DD]
  writes OUTDIR/man/kloigos*.1 (man pages) and OUTDIR/completions/{kloigos.bash,_kloigos,kloigos.fish}";

/// What the man pages say in their footer.
struct Meta {
    date: String,
    source: String,
    manual: String,
}

fn main() -> ExitCode {
    let mut out: Option<PathBuf> = None;
    let mut date = String::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Some("--date") => match args.next().and_then(|d| d.into_string().ok()) {
                Some(d) if valid_date(&d) => date = d,
                _ => return usage("--date needs a date as YYYY-MM-DD"),
            },
            Some(s) if s.starts_with('-') => return usage(&format!("unknown option '{s}'")),
            _ if out.is_none() => out = Some(PathBuf::from(a)),
            _ => return usage("only one OUTDIR"),
        }
    }
    let Some(out) = out else {
        return usage("OUTDIR is missing");
    };
    let meta = Meta {
        date,
        source: format!("kloigos {}", env!("CARGO_PKG_VERSION")),
        manual: "kloigos manual".into(),
    };
    match generate(&out, &meta) {
        Ok(n) => {
            println!(
                "kloigos-gen: {n} man page(s) in {}, 3 completions in {}",
                out.join("man").display(),
                out.join("completions").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kloigos-gen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("kloigos-gen: {why}\n{USAGE}");
    ExitCode::from(2)
}

fn valid_date(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// Writes everything; returns the number of man pages.
fn generate(out: &Path, meta: &Meta) -> io::Result<usize> {
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&comp_dir)?;

    // The NAME line of kloigos(1) wants a phrase, not the crate's description.
    let mut cmd = Cli::command()
        .about("book the machines of a shared cluster: whole hosts or CPU ranges, now or later")
        .disable_help_subcommand(true);
    cmd.build();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "kloigos", &comp_dir)?;
    }

    let mut buf = Vec::new();
    main_page(&cmd, meta, &mut buf)?;
    fs::write(man_dir.join("kloigos.1"), &buf)?;
    let mut count = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        count += sub_pages(sub, meta, &man_dir)?;
    }
    Ok(count)
}

fn man(cmd: &Command, meta: &Meta) -> Man {
    Man::new(cmd.clone())
        .section("1")
        .date(meta.date.clone())
        .source(meta.source.clone())
        .manual(meta.manual.clone())
}

/// `kloigos.1`: clap's sections plus exit status, environment, files and
/// see also, which clap knows nothing about.
fn main_page(cmd: &Command, meta: &Meta, w: &mut dyn Write) -> io::Result<()> {
    let m = man(cmd, meta);
    m.render_title(w)?;
    m.render_name_section(w)?;
    m.render_synopsis_section(w)?;
    m.render_description_section(w)?;
    w.write_all(DESCRIPTION.as_bytes())?;
    m.render_options_section(w)?;
    m.render_subcommands_section(w)?;
    w.write_all(EXTRA.as_bytes())?;
    m.render_version_section(w)?;
    Ok(())
}

/// One page per subcommand, recursively (`kloigos-admin-add-node.1`).
fn sub_pages(cmd: &Command, meta: &Meta, dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        n += sub_pages(sub, meta, dir)?;
    }
    let m = man(cmd, meta);
    let mut buf = Vec::new();
    m.render(&mut buf)?;
    buf.extend_from_slice(b".SH \"SEE ALSO\"\n\\fBkloigos\\fR(1)\n");
    fs::write(dir.join(m.get_filename()), &buf)?;
    Ok(n + 1)
}

/// Appended to the DESCRIPTION section of `kloigos.1`.
const DESCRIPTION: &str = r#".PP
Users book a whole node, or a contiguous range of its CPUs (and the ports
that go with them), for a span of time, now or later.
Only while a booking holds can its user log in to the node over SSH
(the PAM module \fBpam_kloigos\fR(8) decides);
the node's \fBkloigos-housekeeper\fR(8) confines the user's processes to
the booked CPUs and ports, and ends what they left running once it is over.
.PP
There is no daemon and no database: the state lives in small JSON files on a
shared (NFS) directory.
\fBkloigos\fR is installed setuid to the service account \fIkloigos\fR
(never root), which owns that directory.
.PP
Durations: a bare number is seconds, \fB90m\fR, \fB2h30m\fR, \fB1d\fR,
\fB1w\fR, \fBHH:MM:SS\fR, \fBD\-HH:MM:SS\fR.
Times: \fBnow\fR, \fB+2h\fR, \fBHH:MM\fR (the next such time),
\fBYYYY\-MM\-DD HH:MM\fR (cluster time zone), RFC 3339.
"#;

/// The sections after SUBCOMMANDS in `kloigos.1`.
const EXTRA: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Success.
.TP
.B 1
Refused: no capacity, not allowed, no booking (for \fBdoctor\fR: a check failed).
.TP
.B 2
Usage: a bad argument; the message names it and the accepted forms.
.TP
.B 3
Storage: the shared directory is unreachable, a lock is busy, or a file is
corrupt or untrusted; the message names the file.
.SH ENVIRONMENT
.TP
.B KLOIGOS_CONFIG
Read this configuration instead of \fI/etc/kloigos/config.json\fR, like
\fB\-\-config\fR; the program then drops to the caller's uid.
.TP
.B NO_COLOR
When set, \fBinfo\fR prints no colors.
.SH FILES
.TP
.I /etc/kloigos/config.json
The node's configuration; only \fBshared\fR is required.
An example: \fI/usr/share/doc/kloigos/examples/config.example.json\fR.
.TP
.I SHARED/cluster.json
The cluster policy (\fBkloigos admin policy\fR).
.TP
.I SHARED/nodes/NODE/
A node's \fIstate.json\fR, \fIjournal.jsonl\fR, \fIfacts.json\fR and lock.
.SH EXAMPLES
.nf
kloigos info
kloigos alloc \-w node3 \-t 2h
kloigos run \-\-cpus 8 \-t 30m \-\- make \-j8
kloigos release \-\-all
sudo kloigos doctor
.fi
.SH "SEE ALSO"
\fBkloigos\-housekeeper\fR(8), \fBpam_kloigos\fR(8), \fBssh\fR(1),
and one page per subcommand: \fBkloigos\-alloc\fR(1), \fBkloigos\-info\fR(1), ...
"#;
