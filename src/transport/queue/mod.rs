//! The queue transport. STUB: being implemented.

use crate::cli::{GatewayArgs, RelayArgs};

use super::TransportError;

pub fn gateway(_args: GatewayArgs) -> Result<(), TransportError> {
    Err(TransportError::Fatal(
        "the queue gateway is not implemented yet".into(),
    ))
}

pub fn relay(_args: RelayArgs) -> Result<(), TransportError> {
    Err(TransportError::Fatal(
        "the queue relay is not implemented yet".into(),
    ))
}

pub fn helper(_args: crate::cli::QueueHelperArgs) -> Result<(), TransportError> {
    Err(TransportError::Fatal(
        "the queue helper is not implemented yet".into(),
    ))
}
