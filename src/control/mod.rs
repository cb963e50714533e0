//! Sans-IO application logic of the TCF: provisioned data, the registrar, peer heartbeats,
//! call control ([`tcf`]), floor control ([`floor`]) and what they ask of the user plane
//! ([`media`]).

pub mod floor;
pub mod media;
pub mod provisioning;
pub mod tcf;
