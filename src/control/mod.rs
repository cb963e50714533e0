//! Sans-IO application logic of the TCF: provisioned data now; the registrar, peer heartbeats,
//! call and floor control come with the control-plane issues.

pub mod floor;
pub mod provisioning;
pub mod tcf;
