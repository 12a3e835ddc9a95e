//! The command line, as clap sees it. Kiwi's flags (`-w/--worker`,
//! `-t/--time`, `-u/--user`, `-p/--partition`) keep working.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Book the machines of a shared cluster: whole hosts or CPU ranges, now or later.
#[derive(Debug, Parser)]
#[command(name = "kloigos", version = crate::VERSION, about, max_term_width = 100)]
pub struct Cli {
    /// Use this shared directory instead of the configured one (drops to your own uid).
    #[arg(long, global = true, value_name = "DIR")]
    pub shared: Option<PathBuf>,
    /// Read this configuration instead of /etc/kloigos/config.json (drops to your own uid).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the cluster of this partition (a name from the config's "partitions").
    #[arg(short = 'p', long, global = true, value_name = "NAME")]
    pub partition: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Nodes, free units, who holds what until when, next free time, health.
    Info(InfoArgs),
    /// Book a node, or units of one, for a span of time.
    Alloc(AllocArgs),
    /// Book (or reuse a booking), ssh there, run a command or a shell, release at the end.
    Run(RunArgs),
    /// ssh into a node you hold.
    Ssh(SshArgs),
    /// End bookings now.
    #[command(alias = "kill")]
    Release(ReleaseArgs),
    /// Move a booking's end later.
    Extend(ExtendArgs),
    /// Current and future bookings (yours by default).
    List(ListArgs),
    /// Past bookings from the journals; CPU-hours per user with --summary.
    History(HistoryArgs),
    /// The decision the PAM module would take for USER on NODE, and why.
    CheckLogin(CheckLoginArgs),
    /// Check the installation: config, shared tree, modes, PAM stanza, heartbeat.
    Doctor,
    /// Bookings over time: one row per unit, a bar per booking, free time empty.
    #[command(alias = "cal")]
    Timeline(TimelineArgs),
    /// Write the dashboard (index.html + cluster.json) into a directory, or serve it.
    Dashboard(DashboardArgs),
    /// Build a throwaway cluster in DIR and take a narrated tour (no root needed).
    Demo(DemoArgs),
    /// Administer the cluster.
    #[command(subcommand)]
    Admin(AdminCmd),
}

/// `info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Only these nodes.
    pub nodes: Vec<String>,
    /// Only nodes with a free unit now.
    #[arg(long)]
    pub free: bool,
    /// Mark GPU bookings idle after this long with 0% GPU and no CPU use.
    #[arg(long, value_name = "DUR", default_value = "1h")]
    pub idle_after: String,
}

/// When to colour the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `timeline`.
#[derive(Debug, Args)]
pub struct TimelineArgs {
    /// Only these nodes.
    pub nodes: Vec<String>,
    /// Start of the view: now, +2h, HH:MM, YYYY-MM-DD HH:MM, RFC 3339 (default: this hour; today for spans over 2d).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Length of the view, 1h to 31d: 24h, 7d.
    #[arg(long, value_name = "DUR", default_value = "24h")]
    pub span: String,
    /// Only nodes with this label (repeatable).
    #[arg(short = 'l', long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// Only this user's bookings.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Also find the earliest slot for a request, as alloc reads it: 'units=2,t=4h' (or cpus=N, whole).
    #[arg(long, value_name = "REQUEST")]
    pub fits: Option<String>,
    /// Columns to draw in (default: the terminal's width, else $COLUMNS, else 80).
    #[arg(long, value_name = "N")]
    pub width: Option<u16>,
    /// Colours: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = ColorWhen::Auto)]
    pub color: ColorWhen,
    /// Draw as if it were TIME (a what-if for scripts and tests; reads only).
    #[arg(long, value_name = "TIME", hide = true)]
    pub now: Option<String>,
}

/// `dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Write index.html and cluster.json into DIR (created if missing), as yourself.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Then serve DIR read-only on ADDR (e.g. 127.0.0.1:8080) with kloigos-dashboard.
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<String>,
    /// Take the snapshot as if it were TIME (a what-if for tests; reads only).
    #[arg(long, value_name = "TIME", hide = true)]
    pub now: Option<String>,
}

/// What to book; shared by `alloc` and `run`.
#[derive(Debug, Args, Clone, Default)]
pub struct AllocSpec {
    /// The node to book (placement picks one when omitted).
    #[arg(short = 'w', long = "worker", value_name = "NODE")]
    pub worker: Option<String>,
    /// How long: 3600 (seconds), 90m, 2h30m, 1d, HH:MM:SS, D-HH:MM:SS.
    #[arg(short = 't', long = "time", value_name = "DUR")]
    pub time: Option<String>,
    /// Start at TIME (or the earliest slot after it): now, +2h, HH:MM, YYYY-MM-DD HH:MM, RFC 3339.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Book N units.
    #[arg(long, value_name = "N", conflicts_with_all = ["cpus", "whole", "gpus"])]
    pub units: Option<u32>,
    /// Book enough units for N CPUs.
    #[arg(long, value_name = "N", conflicts_with_all = ["whole", "gpus"])]
    pub cpus: Option<u32>,
    /// Book enough units for N GPUs (only nodes with GPUs qualify).
    #[arg(long, value_name = "N", conflicts_with = "whole")]
    pub gpus: Option<u32>,
    /// Book every unit of the node.
    #[arg(long)]
    pub whole: bool,
    /// Only nodes with this label (repeatable).
    #[arg(short = 'l', long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// When nothing is free, wait until something is (at most DUR, default 1h; the policy's max_wait caps it).
    #[arg(long, value_name = "DUR", num_args = 0..=1, default_missing_value = "1h", require_equals = true)]
    pub wait: Option<String>,
    /// A note shown by info and list.
    #[arg(short = 'm', long = "note", value_name = "NOTE")]
    pub note: Option<String>,
    /// Book for this user (admins only, or yourself).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
}

/// `alloc`.
#[derive(Debug, Args)]
pub struct AllocArgs {
    /// The node to book (same as -w).
    #[arg(value_name = "NODE", conflicts_with = "worker")]
    pub node: Option<String>,
    /// What to book.
    #[command(flatten)]
    pub spec: AllocSpec,
    /// One attempt of a waiting `alloc --wait`: no room exits 75, quietly.
    #[arg(long, hide = true, conflicts_with = "wait")]
    pub wait_attempt: bool,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to book.
    #[command(flatten)]
    pub spec: AllocSpec,
    /// The ssh program to use.
    #[arg(long, value_name = "PROGRAM", default_value = "ssh")]
    pub ssh: PathBuf,
    /// The command to run there (a login shell when omitted).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// A booking id (node3:12) or a node name.
    pub target: String,
    /// The ssh program to use.
    #[arg(long, value_name = "PROGRAM", default_value = "ssh")]
    pub ssh: PathBuf,
    /// The command to run there (a login shell when omitted).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Booking ids (node3:12).
    pub ids: Vec<String>,
    /// All of the user's bookings on this node.
    #[arg(short = 'w', long = "worker", value_name = "NODE")]
    pub worker: Option<String>,
    /// All of the user's bookings.
    #[arg(long)]
    pub all: bool,
    /// Whose bookings (admins only, or yourself).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
}

/// `extend`.
#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// The booking id.
    pub id: String,
    /// How much longer: +1h (or 1h).
    #[arg(
        short = 't',
        long = "time",
        value_name = "+DUR",
        conflicts_with = "until",
        allow_hyphen_values = true
    )]
    pub time: Option<String>,
    /// The new end time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Everyone's bookings.
    #[arg(long)]
    pub all: bool,
    /// This user's bookings.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
}

/// `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this user.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Only this node.
    #[arg(short = 'w', long = "worker", value_name = "NODE")]
    pub worker: Option<String>,
    /// Only bookings that ended after TIME (e.g. -- since +... not allowed; use a date or HH:MM).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Booked CPU-hours per user instead of the list.
    #[arg(long)]
    pub summary: bool,
}

/// `check-login`.
#[derive(Debug, Args)]
pub struct CheckLoginArgs {
    /// The user logging in.
    pub user: String,
    /// The node (default: this host's node name).
    pub node: Option<String>,
}

/// `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to build the demo cluster.
    #[arg(default_value = "kloigos-demo")]
    pub dir: PathBuf,
}

/// Node settings shared by `add-node` and `set-node`.
#[derive(Debug, Args, Clone, Default)]
pub struct NodeFlags {
    /// Bookable CPUs, e.g. 0-63 or 0-31,64-95.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// CPUs per bookable unit (default: the whole node is one unit).
    #[arg(long, value_name = "N")]
    pub unit_cpus: Option<u32>,
    /// Port range split evenly across units, e.g. 20000-29999.
    #[arg(long, value_name = "A-B")]
    pub ports: Option<String>,
    /// GPU indices split evenly across units, e.g. 0-3 (each unit must get as many).
    #[arg(long, value_name = "LIST")]
    pub gpus: Option<String>,
    /// Memory per unit, e.g. 16G.
    #[arg(long, value_name = "SIZE")]
    pub mem_per_unit: Option<String>,
    /// A label (repeatable).
    #[arg(short = 'l', long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// A weekly booking window (repeatable): 'Mon-Fri 08:00-20:00', '22:00-06:00'.
    #[arg(long = "window", value_name = "SPEC")]
    pub windows: Vec<String>,
}

/// `admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Create the cluster in the shared directory.
    Init(InitArgs),
    /// Add a node.
    AddNode {
        /// Node name.
        name: String,
        /// Its settings.
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// Change a node (refused if current bookings would no longer fit).
    SetNode {
        /// Node name.
        name: String,
        /// Settings to change.
        #[command(flatten)]
        flags: NodeFlags,
        /// Remove the port range.
        #[arg(long)]
        no_ports: bool,
        /// Remove the GPUs.
        #[arg(long, conflicts_with = "gpus")]
        no_gpus: bool,
        /// Remove all labels (before adding any given).
        #[arg(long)]
        clear_labels: bool,
        /// Remove all windows (before adding any given).
        #[arg(long)]
        clear_windows: bool,
    },
    /// Remove a node (its journal is kept under deleted/).
    DelNode {
        /// Node name.
        name: String,
        /// Remove it even with current or future bookings.
        #[arg(long)]
        force: bool,
    },
    /// Stop taking new bookings on a node; running ones continue.
    Drain {
        /// Node name.
        name: String,
        /// Why (shown by info).
        #[arg(short = 'r', long, default_value = "drained by an admin")]
        reason: String,
    },
    /// Take bookings on a drained node again.
    Resume {
        /// Node name.
        name: String,
    },
    /// Show the cluster policy, or set fields: KEY=VALUE (lists comma-separated).
    Policy {
        /// Fields to set.
        settings: Vec<String>,
    },
    /// Check every file of the shared tree; --repair fixes what is safe to fix.
    Fsck {
        /// Remove stray tmp files, set journal lines aside, fix modes.
        #[arg(long)]
        repair: bool,
    },
}

/// `admin init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Display name of the cluster.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Time zone for windows and local times.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// An admin user (repeatable).
    #[arg(long = "admin", value_name = "USER")]
    pub admins: Vec<String>,
}
