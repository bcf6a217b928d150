//! The `flashsale` command line: the settings (src/config/, every one also a `FLASHSALE_*`
//! variable) and the commands. Part of the binary (main.rs declares it), not of the library.

use clap::{Parser, Subcommand};
use flashsale::config::Config;

use crate::admin::outbox_dead::OutboxDeadAction;
use crate::admin::simulate::SimulateArgs;

#[derive(Debug, Parser)]
#[command(
    name = "flashsale",
    version,
    about = "A flash-sale back end that cannot oversell"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the HTTP API and its background workers (the default).
    #[command(next_line_help = true)]
    #[command(
        after_help = "Every setting is a flag and an environment variable (the flag wins). \
                            Durations take `500ms`, `30s`, `10m`, `1h`, or a number of seconds."
    )]
    Serve,
    /// Create the database if missing and apply the migrations, then exit.
    Migrate,
    /// Load a demo 12.12 catalog: products, two warehouses, stock, a sale window opening now.
    Seed,
    /// Compare Redis with MySQL per sku; exits 1 on a mismatch.
    Reconcile,
    /// Rebuild Redis from MySQL after Redis lost its data, or some skus' counters (before the
    /// service takes traffic). Writes the whole outbox back first, waiting for every writer's
    /// pending entries; exits 2 (nothing changed) if they are not written within --wait, 1 on
    /// any other problem.
    RebuildCache {
        /// How long to wait for the outbox to be written back (default: twice claim_idle, at
        /// least 10 s).
        #[arg(long, value_parser = flashsale::config::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Outbox events set aside because they can never be written (unparseable, or an order id
    /// MySQL holds for another order): list, show, replay exactly once.
    OutboxDead {
        #[command(subcommand)]
        action: OutboxDeadAction,
    },
    /// A 12.12 sale from the buyers' side, with a report (against --url, or a service of its own).
    Simulate(SimulateArgs),
    /// Set the admin account's password (FLASHSALE_ADMIN_USERNAME; created when missing). Reads
    /// it from standard input (one line; asked twice, unechoed, on a terminal), or with
    /// --from-env from FLASHSALE_ADMIN_PASSWORD; never from the command line. Refuses a weak
    /// password or one this repository publishes. Running services need no restart.
    AdminPassword {
        /// Take the new password from FLASHSALE_ADMIN_PASSWORD instead of standard input.
        #[arg(long)]
        from_env: bool,
    },
    /// Print customer access tokens signed with FLASHSALE_JWT_SECRET, one a line (load tests),
    /// creating their accounts (`load-<id>`) in FLASHSALE_MYSQL_URL's database where missing.
    MintTokens {
        /// How many.
        #[arg(long, default_value_t = 1_000)]
        count: u64,
        /// The first customer id; the others follow.
        #[arg(long, default_value_t = 1_000_000)]
        first_user_id: u64,
    },
}
