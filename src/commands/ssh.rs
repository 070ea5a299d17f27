//! The hidden commands behind a job's SSH access: the server process and the session entry.

use anyhow::Result;

use crate::cli::{EnterArgs, SshServerArgs};
use imsctl::context::Context;
use imsctl::job;
use imsctl::sandbox::enter::{self, SessionCommand, Target, Terminal};
use imsctl::ssh::daemon::{JobHooks, SessionsEnd};
use imsctl::store::{JobRecord, Store};

/// `internal-ssh-server`: serve until the job's complete/failed file or SIGTERM.
pub fn serve(ctx: &Context, store: &Store, args: &SshServerArgs) -> Result<()> {
    let job: JobRecord = store.get(&args.id)?;
    // Packed as the job was created (or `jobs ssh` was told), read from its record.
    let pack = job.settings.pack.clone().unwrap_or_default();
    job::writer_options(&pack)?;
    let id = job.id.to_string();
    let hooks = JobHooks {
        sandbox: job::sandbox_config(store, &job),
        environment: job::ims_environment(&job),
        end: Box::new(|end| match end {
            SessionsEnd::Complete => {
                let result = job::complete(ctx, store, &id, &pack)?;
                eprintln!(
                    "imsctl ssh: job {id} published image {}",
                    result.ims_image_record.id
                );
                Ok(())
            }
            SessionsEnd::Failed => {
                job::fail(store, &id, "the user signalled failure (failed file)").map(drop)
            }
        }),
    };
    imsctl::ssh::daemon::serve(
        store,
        &job,
        args.listen,
        args.accept_key_file.as_deref(),
        hooks,
    )
}

/// `internal-enter`: join the held sandbox and run the session; exits as the session does.
/// Must run before this process starts any thread.
pub fn enter(args: &EnterArgs) -> Result<()> {
    let target = Target {
        holder: args.pid,
        jailed: args.jail,
        confinement: imsctl::sandbox::Confinement::with_added(&args.cap_add),
    };
    let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    let never = if args.sftp {
        enter::enter(target, None, || {
            let home = std::path::Path::new("/root");
            imsctl::ssh::sftp::serve_stdio(home)
                .map(|()| 0)
                .map_err(|e| imsctl::sandbox::Error::io("serve SFTP in", home, e))
        })?
    } else {
        let command = match (&args.command, args.argv.is_empty()) {
            (Some(c), _) => SessionCommand::ShellCommand(c.clone()),
            (None, false) => SessionCommand::Argv(args.argv.clone()),
            (None, true) => SessionCommand::LoginShell,
        };
        let terminal = args.pty.map(|size| Terminal {
            size: size.0,
            control: args.control_fd.map(|fd| {
                // SAFETY: the SSH server passes this descriptor open, for us alone.
                unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
            }),
        });
        enter::enter(target, terminal, || enter::exec_session(&command, &env))?
    };
    match never {}
}

/// The options a job's SSH server is started with, all placed after its subcommand (the global
/// ones are accepted there too): S3 transfer settings and verbosity as this process has them.
/// Where to publish and how to pack it reads from the job's record. The store is added by
/// [`imsctl::ssh::daemon::start`].
pub fn server_args(ctx: &Context) -> Vec<String> {
    let mut args = Vec::new();
    let s3 = &ctx.s3;
    if let Some(e) = &s3.endpoint {
        args.extend(["--s3-endpoint".to_string(), e.clone()]);
    }
    if let Some(c) = &s3.ca_bundle {
        args.extend(["--ca-bundle".to_string(), c.display().to_string()]);
    }
    args.extend([
        "--s3-addressing-style".to_string(),
        s3.addressing_style.to_string(),
    ]);
    if let Some(p) = s3.part_size {
        args.extend(["--part-size".to_string(), p.to_string()]);
    }
    if let Some(c) = s3.concurrency {
        args.extend(["--concurrency".to_string(), c.to_string()]);
    }
    if s3.stream {
        args.push("--s3-stream".into());
    }
    args.extend(std::iter::repeat_n(
        "-v".to_string(),
        usize::from(ctx.verbose),
    ));
    args.push("--quiet".into());
    args
}
