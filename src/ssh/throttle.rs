//! Who may open a connection to a job's SSH server, after OpenSSH's sshd (9.8+ defaults; its
//! option names in brackets):
//!
//! - each source holds at most [`Limits::per_source_startups`] connections that have not
//!   authenticated yet (`PerSourceMaxStartups`); past it, a connection is refused at once;
//! - all sources together: from [`Startups::start`] unauthenticated connections on, a new one is
//!   refused with a probability rising from [`Startups::rate`] % to 100 % at [`Startups::full`]
//!   [MaxStartups start:rate:full];
//! - a source earns penalty time for what its connections did: failed authentication, left
//!   without authenticating, overstayed the login grace time, was refused for having too many
//!   (`PerSourcePenalties`). Penalty time runs down with the clock; once a source has
//!   [`Penalties::min`] of it, its new connections are refused until the time has run out
//!   (at most [`Penalties::max`]). Connections already open are left alone.
//!
//! Refusals happen before the server sends its version, so they cost no key exchange: that is
//! what keeps one source from making the server compute Diffie-Hellman in a loop (DHEat,
//! CVE-2002-20001). The refused client reads the line sshd sends in the same case.
//!
//! A source is an IPv4 address, or an IPv6 /64 (what one host is usually given).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The throttle's settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Unauthenticated connections one source may hold at once (`PerSourceMaxStartups`).
    pub per_source_startups: usize,
    /// Unauthenticated connections of all sources (`MaxStartups`).
    pub startups: Startups,
    /// A connection that has not authenticated after this long is closed (`LoginGraceTime`).
    pub login_grace: Duration,
    pub penalties: Penalties,
}

/// MaxStartups' `start:rate:full`.
#[derive(Debug, Clone, Copy)]
pub struct Startups {
    pub start: usize,
    /// Percent.
    pub rate: u32,
    pub full: usize,
}

/// PerSourcePenalties: what each offence costs its source, and when penalties apply.
#[derive(Debug, Clone, Copy)]
pub struct Penalties {
    /// The connection made authentication attempts and none succeeded (`authfail`).
    pub auth_failed: Duration,
    /// The connection ended without attempting authentication (`noauth`); also what a connection
    /// refused for the source's (or the server's) startup limit costs.
    pub no_auth: Duration,
    /// The connection was closed by the login grace time [grace-exceeded].
    pub grace_exceeded: Duration,
    /// New connections are refused once a source's penalty time reaches this (`min`)…
    pub min: Duration,
    /// …and penalty time never exceeds this (`max`).
    pub max: Duration,
    /// Sources tracked at most; beyond, new sources go unpenalised rather than evicting the
    /// ones already penalised [max-sources4, overflow:permissive].
    pub max_sources: usize,
}

impl Default for Limits {
    /// sshd's defaults, but for MaxStartups' start: 30 instead of 10, so that one source at its
    /// cap of 10 does not make the server drop other sources' connections at random.
    fn default() -> Self {
        Limits {
            per_source_startups: 10,
            startups: Startups {
                start: 30,
                rate: 30,
                full: 100,
            },
            login_grace: Duration::from_secs(120),
            penalties: Penalties {
                auth_failed: Duration::from_secs(5),
                no_auth: Duration::from_secs(1),
                grace_exceeded: Duration::from_secs(10),
                min: Duration::from_secs(15),
                max: Duration::from_secs(600),
                max_sources: 65536,
            },
        }
    }
}

/// Where connections come from, as the throttle counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source is serving a penalty.
    Penalised,
    /// Its source holds as many unauthenticated connections as it may.
    TooManyFromSource,
    /// Random early drop: the server as a whole holds many unauthenticated connections.
    TooMany,
}

impl Refusal {
    /// The line sshd writes before closing in the same case (ssh-audit and users know them).
    pub fn line(self) -> &'static [u8] {
        match self {
            Refusal::Penalised => b"Not allowed at this time\r\n",
            Refusal::TooManyFromSource | Refusal::TooMany => b"Exceeded MaxStartups\r\n",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Penalised => "its source is penalised",
            Refusal::TooManyFromSource => {
                "too many unauthenticated connections from its source (PerSourceMaxStartups)"
            }
            Refusal::TooMany => "too many unauthenticated connections (MaxStartups)",
        }
    }
}

/// What a connection did that costs its source penalty time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    AuthFailed,
    NoAuth,
    GraceExceeded,
    Refused,
}

impl Offence {
    fn describe(self) -> &'static str {
        match self {
            Offence::AuthFailed => "failed authentication",
            Offence::NoAuth => "connections without authentication",
            Offence::GraceExceeded => "exceeded the login grace time",
            Offence::Refused => "too many connections",
        }
    }
}

impl Penalties {
    fn cost(&self, offence: Offence) -> Duration {
        match offence {
            Offence::AuthFailed => self.auth_failed,
            Offence::NoAuth | Offence::Refused => self.no_auth,
            Offence::GraceExceeded => self.grace_exceeded,
        }
    }
}

/// The server's throttle: one per listening server.
#[derive(Debug)]
pub struct Throttle {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Unauthenticated connections open, of all sources and per source.
    startups: usize,
    per_source: HashMap<Source, usize>,
    penalties: HashMap<Source, Penalty>,
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    /// When the penalty time accumulated so far runs out.
    expiry: Instant,
    /// Whether it reached the minimum: new connections are refused until the expiry.
    active: bool,
}

impl Throttle {
    pub fn new(limits: Limits) -> Arc<Throttle> {
        Arc::new(Throttle {
            limits,
            state: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admit a new connection from `ip`, or say why not. An admitted connection counts as
    /// unauthenticated until its [`Startup`] says otherwise or is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Arc<Startup>, Refusal> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Arc<Startup>, Refusal> {
        let source = Source::of(ip);
        let mut state = self.state();
        if state.is_penalised(source, now) {
            return Err(Refusal::Penalised);
        }
        let from_source = state.per_source.get(&source).copied().unwrap_or(0);
        let refusal = if from_source >= self.limits.per_source_startups {
            Some(Refusal::TooManyFromSource)
        } else if fastrand::u32(0..100) < self.drop_chance(state.startups) {
            Some(Refusal::TooMany)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.penalise(&mut state, source, Offence::Refused, now);
            return Err(refusal);
        }
        state.startups += 1;
        *state.per_source.entry(source).or_default() += 1;
        Ok(Arc::new(Startup {
            throttle: self.clone(),
            source,
            progress: Mutex::new(Progress::Unauthenticated),
        }))
    }

    /// Percent chance of refusing a connection while `startups` are open (sshd's formula).
    fn drop_chance(&self, startups: usize) -> u32 {
        let Startups { start, rate, full } = self.limits.startups;
        if startups < start {
            0
        } else if startups >= full {
            100
        } else {
            let over = (startups - start) as u64;
            let span = (full - start) as u64;
            rate + ((100 - u64::from(rate)) * over / span) as u32
        }
    }

    /// A connection of `source` stops counting as unauthenticated; `offence`, if any, is what
    /// it did.
    fn release(&self, source: Source, offence: Option<Offence>, now: Instant) {
        let mut state = self.state();
        state.startups = state.startups.saturating_sub(1);
        if let Some(count) = state.per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                state.per_source.remove(&source);
            }
        }
        if let Some(offence) = offence {
            self.penalise(&mut state, source, offence, now);
        }
    }

    /// Add the offence's cost to the source's penalty time; log when that makes it refused.
    fn penalise(&self, state: &mut State, source: Source, offence: Offence, now: Instant) {
        if let Some(refused_for) = state.penalise(source, offence, now, &self.limits.penalties) {
            eprintln!(
                "imsctl ssh: refusing connections from {source} for {}s: {}",
                refused_for.as_secs(),
                offence.describe()
            );
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements: a panic elsewhere does not spoil it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Whether the source's new connections are refused now; forgets expired penalties.
    fn is_penalised(&mut self, source: Source, now: Instant) -> bool {
        match self.penalties.get(&source) {
            Some(p) if p.expiry > now => p.active,
            Some(_) => {
                self.penalties.remove(&source);
                false
            }
            None => false,
        }
    }

    /// Returns how long the source is refused for when this offence made its penalty apply.
    fn penalise(
        &mut self,
        source: Source,
        offence: Offence,
        now: Instant,
        limits: &Penalties,
    ) -> Option<Duration> {
        let cost = limits.cost(offence);
        if cost.is_zero() {
            return None;
        }
        if !self.penalties.contains_key(&source) && self.penalties.len() >= limits.max_sources {
            self.penalties.retain(|_, p| p.expiry > now);
            if self.penalties.len() >= limits.max_sources {
                return None;
            }
        }
        let fresh = Penalty {
            expiry: now,
            active: false,
        };
        let penalty = self.penalties.entry(source).or_insert(fresh);
        if penalty.expiry <= now {
            *penalty = fresh;
        }
        penalty.expiry = (penalty.expiry + cost).min(now + limits.max);
        // In whole seconds, as sshd counts: three failures within a second make 15 s.
        let left = whole_seconds(penalty.expiry - now);
        if !penalty.active && left >= limits.min {
            penalty.active = true;
            return Some(left);
        }
        None
    }
}

fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// One admitted connection until it authenticates: the handler reports authentication
/// results, the accept loop the grace time; dropping the last reference settles the account.
#[derive(Debug)]
pub struct Startup {
    throttle: Arc<Throttle>,
    source: Source,
    progress: Mutex<Progress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Unauthenticated,
    /// At least one authentication request was refused.
    Failed,
    GraceExceeded,
    Authenticated,
}

impl Startup {
    pub fn source(&self) -> Source {
        self.source
    }

    /// Authentication succeeded: the connection no longer counts against its source.
    pub fn authenticated(&self) {
        let before = self.set(|_| Progress::Authenticated);
        if before != Progress::Authenticated {
            self.throttle.release(self.source, None, Instant::now());
        }
    }

    /// An authentication request was refused.
    pub fn failed(&self) {
        self.set(|p| match p {
            Progress::Unauthenticated => Progress::Failed,
            other => other,
        });
    }

    /// The login grace time ran out before authentication.
    pub fn grace_exceeded(&self) {
        self.set(|p| match p {
            Progress::Authenticated => p,
            _ => Progress::GraceExceeded,
        });
    }

    pub fn is_authenticated(&self) -> bool {
        self.progress() == Progress::Authenticated
    }

    fn progress(&self) -> Progress {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Update the progress; returns what it was.
    fn set(&self, next: impl FnOnce(Progress) -> Progress) -> Progress {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        let before = *progress;
        *progress = next(before);
        before
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        let offence = match self.progress() {
            Progress::Authenticated => return,
            Progress::Unauthenticated => Offence::NoAuth,
            Progress::Failed => Offence::AuthFailed,
            Progress::GraceExceeded => Offence::GraceExceeded,
        };
        self.throttle
            .release(self.source, Some(offence), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "192.0.2.1";
    const B: &str = "192.0.2.2";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn limits() -> Limits {
        Limits::default()
    }

    fn counts(t: &Throttle) -> (usize, usize) {
        let state = t.state();
        (state.startups, state.per_source.len())
    }

    /// Whether a connection from `source` is admitted at `now`; one that is authenticates, so
    /// that asking costs nothing.
    fn admits(t: &Arc<Throttle>, source: &str, now: Instant) -> bool {
        t.admit_at(ip(source), now)
            .map(|startup| startup.authenticated())
            .is_ok()
    }

    fn offend(t: &Throttle, source: &str, offence: Offence, now: Instant) {
        t.penalise(&mut t.state(), Source::of(ip(source)), offence, now);
    }

    #[test]
    fn a_source_holds_at_most_its_share_of_unauthenticated_connections() {
        let t = Throttle::new(limits());
        let held: Vec<_> = (0..10).map(|_| t.admit(ip(A)).expect("admit")).collect();
        assert_eq!(
            t.admit(ip(A)).err(),
            Some(Refusal::TooManyFromSource),
            "the 11th is refused"
        );
        assert!(t.admit(ip(B)).is_ok(), "another source is not affected");
        // An authenticated connection no longer counts: its source may open another.
        held[0].authenticated();
        let again = t.admit(ip(A)).expect("a slot is free again");
        drop(again);
        drop(held);
        assert_eq!(counts(&t), (0, 0), "every slot is returned");
    }

    #[test]
    fn the_refusal_lines_are_sshds() {
        assert_eq!(Refusal::Penalised.line(), b"Not allowed at this time\r\n");
        assert_eq!(
            Refusal::TooManyFromSource.line(),
            b"Exceeded MaxStartups\r\n"
        );
    }

    #[test]
    fn three_failed_authentications_in_a_row_refuse_the_source_until_the_time_has_run_out() {
        let t = Throttle::new(limits());
        let now = Instant::now();
        offend(&t, A, Offence::AuthFailed, now);
        offend(&t, A, Offence::AuthFailed, now);
        assert!(admits(&t, A, now), "10 s is under the minimum");
        offend(&t, A, Offence::AuthFailed, now);
        assert_eq!(t.admit_at(ip(A), now).err(), Some(Refusal::Penalised));
        assert!(admits(&t, B, now), "only that source");
        let later = now + Duration::from_secs(14);
        assert_eq!(t.admit_at(ip(A), later).err(), Some(Refusal::Penalised));
        let after = now + Duration::from_secs(15);
        assert!(admits(&t, A, after), "15 s later it may again");
        assert!(
            t.state().penalties.is_empty(),
            "the expired penalty is gone"
        );
    }

    #[test]
    fn penalty_time_runs_down_so_slow_offences_never_add_up() {
        let t = Throttle::new(limits());
        let start = Instant::now();
        for i in 0..100 {
            // A connection that leaves without authenticating every 1.5 s (1 s each).
            let now = start + Duration::from_millis(1500 * i);
            offend(&t, A, Offence::NoAuth, now);
            assert!(admits(&t, A, now), "round {i}");
        }
    }

    #[test]
    fn penalty_time_is_capped() {
        let t = Throttle::new(limits());
        let now = Instant::now();
        for _ in 0..1000 {
            offend(&t, A, Offence::GraceExceeded, now);
        }
        let penalty = t.state().penalties[&Source::of(ip(A))];
        assert_eq!(penalty.expiry - now, Duration::from_secs(600));
        assert!(penalty.active);
    }

    #[test]
    fn refusals_for_too_many_connections_cost_penalty_time_too() {
        let t = Throttle::new(limits());
        let now = Instant::now();
        let _held: Vec<_> = (0..10)
            .map(|_| t.admit_at(ip(A), now).expect("admit"))
            .collect();
        for _ in 0..15 {
            assert_eq!(
                t.admit_at(ip(A), now).err(),
                Some(Refusal::TooManyFromSource)
            );
        }
        assert_eq!(t.admit_at(ip(A), now).err(), Some(Refusal::Penalised));
    }

    #[test]
    fn closing_without_authenticating_is_an_offence_and_authenticating_is_not() {
        let t = Throttle::new(limits());
        for _ in 0..3 {
            let s = t.admit(ip(A)).expect("admit");
            s.failed();
        }
        // 3 × 5 s of failed authentication.
        assert_eq!(t.admit(ip(A)).err(), Some(Refusal::Penalised));
        for _ in 0..20 {
            let s = t.admit(ip(B)).expect("admit");
            s.failed(); // e.g. an agent's first key refused, the next one accepted
            s.authenticated();
        }
        assert!(
            !t.state().penalties.contains_key(&Source::of(ip(B))),
            "authenticated connections cost nothing"
        );
        let grace = t.admit(ip(B)).expect("admit");
        grace.grace_exceeded();
        drop(grace);
        let penalty = t.state().penalties[&Source::of(ip(B))];
        assert!(penalty.expiry - Instant::now() > Duration::from_secs(9));
        assert!(!penalty.active, "10 s is under the minimum");
    }

    #[test]
    fn the_server_wide_limit_drops_at_random_between_start_and_full() {
        let t = Throttle::new(limits());
        assert_eq!(t.drop_chance(29), 0);
        assert_eq!(t.drop_chance(30), 30);
        assert_eq!(t.drop_chance(65), 65);
        assert_eq!(t.drop_chance(99), 99);
        assert_eq!(t.drop_chance(100), 100);
        // At full, every new connection is refused, whatever its source.
        let mut l = limits();
        l.startups = Startups {
            start: 5,
            rate: 30,
            full: 5,
        };
        let t = Throttle::new(l);
        let _held: Vec<_> = (0..5)
            .map(|i| t.admit(ip(&format!("10.0.0.{i}"))).expect("admit"))
            .collect();
        for i in 0..20 {
            assert_eq!(
                t.admit(ip(&format!("10.1.0.{i}"))).err(),
                Some(Refusal::TooMany)
            );
        }
    }

    #[test]
    fn ipv6_sources_are_slash_64s_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")),
            Source::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(Source::of(ip("::ffff:192.0.2.1")), Source::of(ip(A)));
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn a_full_penalty_table_admits_new_sources_rather_than_forgetting_old_ones() {
        let mut l = limits();
        l.penalties.max_sources = 2;
        let t = Throttle::new(l);
        let now = Instant::now();
        for _ in 0..3 {
            offend(&t, A, Offence::AuthFailed, now);
            offend(&t, B, Offence::AuthFailed, now);
            offend(&t, "192.0.2.3", Offence::AuthFailed, now);
        }
        assert_eq!(t.admit_at(ip(A), now).err(), Some(Refusal::Penalised));
        assert_eq!(t.admit_at(ip(B), now).err(), Some(Refusal::Penalised));
        assert!(admits(&t, "192.0.2.3", now));
    }
}
