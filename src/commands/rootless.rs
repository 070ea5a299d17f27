//! Rootless runs of the commands that open, pack, report on or remove a job's tree happen
//! inside imsctl's own user namespace (see [`imsctl::sandbox::userns`]). Decided here, once, in
//! `main`, before any thread starts.

use anyhow::{Context as _, Result};

use crate::cli::{Command, ImagesCommand, JobsCommand};
use imsctl::context::Context;
use imsctl::sandbox::IdMapping;
use imsctl::sandbox::userns::{self, SINGLE_ID_HINT};
use imsctl::store::{JobRecord, Store};

/// Enter imsctl's user namespace when `command` needs it and this process is not root. The
/// store's location is fixed first (in `ctx.store`): inside, this process is root, and the
/// default store of root is not the caller's.
pub fn enter_if_needed(command: &Command, ctx: &mut Context) -> Result<()> {
    if nix::unistd::geteuid().is_root() || !needs_namespace(command) {
        return Ok(());
    }
    let root = Store::root_for(ctx.store.as_deref())?;
    if served_over_ssh(command, &root) {
        // `jobs exec` into a running server's sandbox joins it from here, as its owner.
        return Ok(());
    }
    ctx.store = Some(root);
    let entered = userns::enter_own(&IdMapping::detect())
        .context("failed to enter imsctl's user namespace (rootless)")?;
    if let Some(why) = &entered.range_refused {
        eprintln!(
            "imsctl: warning: your subordinate ids could not be mapped ({why}); {SINGLE_ID_HINT}"
        );
    }
    Ok(())
}

fn needs_namespace(command: &Command) -> bool {
    match command {
        Command::Customize(_) => true,
        Command::Images(ImagesCommand::Import(_)) => true,
        Command::Jobs(JobsCommand::List(_) | JobsCommand::Describe(_)) => false,
        Command::Jobs(_) => true,
        _ => false,
    }
}

/// Whether `command` is `jobs exec` of a job whose SSH server holds its sandbox.
fn served_over_ssh(command: &Command, store_root: &std::path::Path) -> bool {
    let Command::Jobs(JobsCommand::Exec(args)) = command else {
        return false;
    };
    let Ok(store) = Store::open(store_root) else {
        return false;
    };
    store
        .get::<JobRecord>(&args.id)
        .is_ok_and(|job| imsctl::ssh::daemon::running_sandbox(&job).is_some())
}
