//! Command-line surface. Names and flags follow ../shared/DESIGN.md's CLI
//! contract, which follows Docker's where a Docker habit exists.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use skiff_core::PortMapping;

use crate::context::Context;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Serverless containers on machines you own",
    propagate_version = true
)]
pub struct Cli {
    /// Data directory: images, containers, state (default /var/lib/skiff).
    #[arg(
        long,
        global = true,
        env = "SKIFF_ROOT",
        default_value = "/var/lib/skiff"
    )]
    pub root: PathBuf,
    /// The daemon to talk to as tcp://HOST:PORT (its --control), with
    /// SKIFF_TOKEN; default: the root's unix socket.
    #[arg(long, global = true, env = "SKIFF_HOST")]
    pub host: Option<String>,
    /// Verbose logs on stderr (or set SKIFF_LOG=debug).
    #[arg(long, global = true)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: Command,
}

// Each subcommand's arguments are built only when it is the one named
// (clap's `Command::defer`). Building all of them touched code and data
// no `skiff run` needs: 0.7 ms of its start here (bench/ab-start), 0.2 ms
// of `skiff --version`.
#[derive(Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Run a command in a new container.
    Run(Box<RunArgs>),
    /// List containers.
    Ps {
        /// Show all containers (default shows just running).
        #[arg(short, long)]
        all: bool,
        /// Only print container ids.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a container's output, or all of a service's instances'
    /// (merged by time, each line prefixed with its instance).
    Logs {
        /// Keep printing new output: until the container exits, or for a
        /// service until interrupted (new instances included).
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(short = 'n', long, value_name = "N")]
        tail: Option<usize>,
        /// A container, or a service.
        name: String,
    },
    /// Stop running containers: the stop signal, a grace period, then SIGKILL.
    Stop {
        /// Seconds to wait before killing.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Stop a running container first (SIGKILL).
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Pull an image from a registry.
    Pull {
        image: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Push an image to a registry.
    Push {
        image: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// List images.
    Images {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove images (untag; unreferenced content is collected).
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from a `docker save` or OCI image-layout archive.
    Load {
        /// The archive (tar, optionally gzip-compressed).
        #[arg(short, long)]
        input: PathBuf,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Save images to an archive.
    Save {
        #[arg(short, long)]
        output: PathBuf,
        /// docker (as `docker save`) or oci (an OCI image layout).
        #[arg(long, default_value = "docker", value_parser = ["docker", "oci"])]
        format: String,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Build an image from a Dockerfile (no Docker engine needed).
    Build(Box<BuildArgs>),
    /// Store credentials for a registry.
    Login {
        registry: String,
        #[arg(short, long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget a registry's credentials.
    Logout { registry: String },
    /// Run the daemon: the gateway, the admin listener and the control socket.
    Serve {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        gateway: SocketAddr,
        /// Where /metrics and /healthz are served.
        #[arg(long, default_value = "127.0.0.1:8081")]
        admin: SocketAddr,
        /// Also serve the control API on TCP here, e.g. 127.0.0.1:8082; every
        /// request needs the bearer token (SKIFF_TOKEN, else $SKIFF_ROOT/control.token).
        #[arg(long)]
        control: Option<SocketAddr>,
        /// An AWS shared-credentials file (e.g. ~/.aws/credentials): the
        /// Lambda API then takes only requests signed with one of its keys.
        #[arg(long, value_name = "FILE")]
        aws_credentials: Option<PathBuf>,
        /// Async worker threads (default: one per CPU but one, at least one).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: Option<u16>,
    },
    /// Deploy a new revision of a service (creating the service); settings
    /// not given are the latest revision's (see --reset).
    // `--concurrency -1` is a bad value to report, not an unknown flag.
    #[command(allow_negative_numbers = true)]
    Deploy(Box<DeployArgs>),
    /// List services.
    Services {
        #[arg(long)]
        json: bool,
    },
    /// Show a service: revisions, traffic, instances.
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a service: stops its instances and forgets its revisions.
    Delete { name: String },
    /// Split a service's traffic between its revisions, e.g. NAME-00001=90,NAME-00002=10.
    Traffic {
        name: String,
        /// REV=PERCENT[,REV=PERCENT...]; percents sum to 100.
        split: String,
        /// TAG=REV: TAG-NAME.localhost reaches REV whatever its share
        /// (repeatable; the tags given replace all others, none keeps them).
        #[arg(long, value_name = "TAG=REV")]
        tag: Vec<String>,
        /// Remove every tag.
        #[arg(long, conflicts_with = "tag")]
        clear_tags: bool,
    },
    /// List a service's revisions with their status and share of traffic.
    Revisions {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Invoke a Lambda-mode service: the result on stdout, the log tail on stderr.
    Invoke {
        name: String,
        /// The event: JSON, or @FILE (default {}).
        #[arg(long)]
        payload: Option<String>,
        /// Queue it (an Event invocation, retried on failure) and return at once.
        #[arg(long = "async")]
        asynchronous: bool,
        /// A revision number or a traffic tag (default: the traffic split).
        #[arg(long)]
        qualifier: Option<String>,
    },
    /// (internal) The process that watches a detached container.
    #[command(name = "__monitor", hide = true)]
    Monitor {
        id: String,
        #[arg(long)]
        notify_fd: i32,
        #[arg(long)]
        listen_fd: Vec<i32>,
    },
}

#[derive(Args, Clone)]
pub struct BuildArgs {
    /// Name the image (repeatable), e.g. app:v1.
    #[arg(short, long = "tag", value_name = "NAME", required = true)]
    pub tag: Vec<String>,
    /// The Dockerfile (default CONTEXT/Dockerfile).
    #[arg(short, long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A build argument, K=V (or K to take it from this environment).
    #[arg(long, value_name = "K=V")]
    pub build_arg: Vec<String>,
    /// Build up to this stage (default: the last).
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Run every step, ignoring the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// The network RUN steps get: host (default, reaches package registries) or none.
    #[arg(long, default_value = "host", value_parser = ["host", "none"])]
    pub network: String,
    /// Also write the image as an archive: oci:FILE or docker:FILE.
    #[arg(long, value_name = "TYPE:FILE")]
    pub output: Option<String>,
    /// No progress or step output; only the image id.
    #[arg(short, long)]
    pub quiet: bool,
    /// The OCI runtime for RUN steps.
    #[arg(long, env = "SKIFF_RUNTIME", default_value = "crun")]
    pub runtime: String,
    /// The build context directory.
    pub context: PathBuf,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container id.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep standard input open.
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (K=V, or K to copy it from here).
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Read environment variables from a file, one K=V a line.
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// Publish a container port on the host: [IP:]HOST:CONTAINER (IP defaults to 127.0.0.1).
    #[arg(short, long = "publish", value_name = "HOST:CTR", value_parser = parse_port)]
    pub publish: Vec<PortMapping>,
    /// Bind-mount a host directory: HOST:CONTAINER[:ro].
    #[arg(short, long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volume: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Memory limit, e.g. 256m (the container is killed beyond it).
    #[arg(short, long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// CPU limit, e.g. 0.5.
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// Maximum number of processes (default 4096; -1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// bridge (default: own address on skiff0), none (loopback only) or host.
    #[arg(long, default_value = "bridge", value_parser = ["bridge", "none", "host"])]
    pub network: String,
    /// The OCI runtime: crun (default), runc, youki, runsc, or a path.
    #[arg(long, env = "SKIFF_RUNTIME", default_value = "crun")]
    pub runtime: String,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Clone)]
pub struct DeployArgs {
    pub name: String,
    /// The image (pulled now if it is not here).
    #[arg(long, required_unless_present = "source", conflicts_with = "source")]
    pub image: Option<String>,
    /// Build DIR's Dockerfile and deploy the result (as `gcloud run deploy --source`).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// The port the container listens on; it gets it as $PORT (default 8080).
    #[arg(long)]
    pub port: Option<u16>,
    /// An environment variable, K=V (added to the latest revision's, or
    /// replacing one of them).
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Drop a variable the latest revision has.
    #[arg(long, value_name = "K")]
    pub remove_env: Vec<String>,
    /// Start from the defaults, not from the latest revision's settings.
    #[arg(long)]
    pub reset: bool,
    /// Memory limit per instance, e.g. 256m.
    #[arg(short, long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// CPU limit per instance, e.g. 0.5.
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// Requests in flight per instance at most (0 = unlimited).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Instances kept up even when idle.
    #[arg(long)]
    pub min: Option<u32>,
    /// Instances at most (0 = unlimited).
    #[arg(long)]
    pub max: Option<u32>,
    /// How long a request may wait for an instance and a start may take (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Idle this long (no request), a --min 0 service scales to zero (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Create the revision without moving traffic to it (see `skiff traffic`).
    #[arg(long)]
    pub no_traffic: bool,
    /// http (the default): the container listens on $PORT; lambda: it runs
    /// an AWS Lambda runtime client (one invocation at a time per instance).
    /// A change of mode starts from the defaults.
    #[arg(long, value_parser = ["http", "lambda"])]
    pub mode: Option<String>,
    /// Lambda mode: how often a failed --async (Event) invocation is retried (0-2, default 2).
    #[arg(long, value_name = "N")]
    pub event_retries: Option<u8>,
    /// Lambda mode: where a failed Event invocation goes after its retries:
    /// http://URL (the destination record is POSTed) or a function name.
    #[arg(long, value_name = "DEST")]
    pub on_failure: Option<String>,
    /// Ready once a GET of this path answers 2xx/3xx (default, or "": once
    /// the port accepts).
    #[arg(long, value_name = "PATH")]
    pub readiness_path: Option<String>,
    /// The command instead of the image's CMD (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    skiff_core::parse_duration(s).map_err(|e| e.to_string())
}
fn parse_port(s: &str) -> Result<PortMapping, String> {
    skiff_core::parse_port_mapping(s).map_err(|e| e.to_string())
}
fn parse_bytes(s: &str) -> Result<u64, String> {
    skiff_core::parse_bytes(s).map_err(|e| e.to_string())
}
fn parse_cpus(s: &str) -> Result<u64, String> {
    skiff_core::parse_cpus(s).map_err(|e| e.to_string())
}

/// Runs the command; the `u8` is the process exit code.
pub fn dispatch(cli: Cli) -> Result<u8> {
    let mut ctx = Context::new(cli.root);
    ctx.host = cli.host;
    match cli.command {
        Command::Run(args) => crate::container::run(&ctx, *args),
        Command::Ps { all, quiet, json } => crate::container::ps(&ctx, all, quiet, json).map(|_| 0),
        Command::Logs { follow, tail, name } => {
            crate::logs::print(&ctx, &name, follow, tail).map(|_| 0)
        }
        Command::Stop { time, containers } => {
            crate::container::stop(&ctx, &containers, time).map(|_| 0)
        }
        Command::Rm { force, containers } => {
            crate::container::rm(&ctx, &containers, force).map(|_| 0)
        }
        Command::Pull { image, quiet } => crate::images::pull(&ctx, &image, quiet).map(|_| 0),
        Command::Push { image, quiet } => crate::images::push(&ctx, &image, quiet).map(|_| 0),
        Command::Images { quiet, json } => crate::images::list(&ctx, quiet, json).map(|_| 0),
        Command::Rmi { images } => crate::images::rmi(&ctx, &images).map(|_| 0),
        Command::Load { input, quiet } => crate::images::load(&ctx, &input, quiet).map(|_| 0),
        Command::Save {
            output,
            format,
            images,
        } => crate::images::save(&ctx, &output, &format, &images).map(|_| 0),
        Command::Tag { source, target } => crate::images::tag(&ctx, &source, &target).map(|_| 0),
        Command::Build(args) => crate::build::build(&ctx, *args),
        Command::Login {
            registry,
            username,
            password_stdin,
        } => crate::images::login(&ctx, &registry, username, password_stdin).map(|_| 0),
        Command::Logout { registry } => crate::images::logout(&ctx, &registry).map(|_| 0),
        Command::Serve {
            gateway,
            admin,
            control,
            aws_credentials,
            workers,
        } => crate::serve::serve(
            &ctx,
            crate::serve::ServeOptions {
                gateway,
                admin,
                control,
                aws_credentials,
                workers: workers.map(usize::from),
            },
        ),
        Command::Deploy(args) => crate::client::deploy(&ctx, *args).map(|_| 0),
        Command::Services { json } => crate::client::services(&ctx, json).map(|_| 0),
        Command::Describe { name, json } => crate::client::describe(&ctx, &name, json).map(|_| 0),
        Command::Delete { name } => crate::client::delete(&ctx, &name).map(|_| 0),
        Command::Traffic {
            name,
            split,
            tag,
            clear_tags,
        } => crate::client::traffic(&ctx, &name, &split, &tag, clear_tags).map(|_| 0),
        Command::Revisions { name, json } => crate::client::revisions(&ctx, &name, json).map(|_| 0),
        Command::Invoke {
            name,
            payload,
            asynchronous,
            qualifier,
        } => crate::client::invoke(
            &ctx,
            &name,
            payload.as_deref(),
            asynchronous,
            qualifier.as_deref(),
        ),
        Command::Monitor {
            id,
            notify_fd,
            listen_fd,
        } => crate::monitor::detached_main(&ctx, &id, notify_fd, &listen_fd),
    }
}
