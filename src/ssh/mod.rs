//! SSH access to a customization job (IMS options 1 and 2): a per-job server ([`daemon`]) speaking
//! the protocol with russh ([`server`]), what it offers ([`config`]), who may connect
//! ([`throttle`], enforced by the accept loop of [`accept`]), its keys ([`keys`]), and the SFTP
//! server that file transfers (sftp, scp, Ansible) run inside the sandbox ([`sftp`]).

pub mod accept;
pub mod config;
pub mod daemon;
pub mod keys;
pub mod server;
pub mod sftp;
pub mod throttle;
