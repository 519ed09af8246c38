//! The in-process tier of the transport's tests: the real connection loop ([`super::connection`]),
//! forwarding and relay ([`super::forward`]), request bodies ([`super::body`]) and tunnels
//! ([`super::tunnel`]) driven over in-memory pipes and a loopback upstream inside the test, with tokio's
//! paused clock wherever a timeout is involved (no test waits on the wall clock). The rig is
//! [`super::testing`]; the black-box suites in `tests/` stay and cover the same behaviour through the
//! binary.

mod bodies;
mod clock;
mod framing;
mod keepalive;
mod relay;
mod tunnel;
