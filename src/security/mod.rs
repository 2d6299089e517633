//! Who is calling: the cluster's certificates (`pki`), and (in the production build) the
//! TLS that carries them.

pub mod pki;
pub mod store;
#[cfg(not(madsim))]
pub mod tls;
