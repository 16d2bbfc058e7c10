//! Why a command was refused or failed, in words the API answers with.

use uuid::Uuid;

use super::prices::{UnpricedItem, WrongPrice};
use super::stock::ShortItem;
use crate::domain::{OrderError, Status};
use crate::store::StoreError;

/// Why a command was not applied. Nothing of a refused command is stored.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// One field of the command is not acceptable.
    #[error("{message}")]
    InvalidField {
        /// Which field, e.g. `items[0].override_quantity`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such order, or not one the caller may see; the two are alike so that order ids
    /// cannot be probed.
    #[error("no order {0}")]
    OrderNotFound(Uuid),
    /// Items ask for more than the stock view has.
    #[error("{} item(s) ask for more than is available", .0.len())]
    InsufficientStock(Vec<ShortItem>),
    /// Lines of a customer or the assistant whose products have no catalogue price
    /// (`CATALOGUE_PRICES=required`).
    #[error(
        "{} has no catalogue price; {} item(s) cannot be ordered at a price of the caller's",
        .0[0].product_id,
        .0.len()
    )]
    UnpricedProducts(Vec<UnpricedItem>),
    /// Lines of a customer or the assistant whose unit price is not the catalogue's.
    #[error(
        "{} is {} {}, not the catalogue's {} {} for product {}; {} item(s) differ from the catalogue",
        .0[0].field,
        .0[0].unit_price,
        .0[0].currency.as_str(),
        .0[0].catalogue_unit_price,
        .0[0].catalogue_currency.as_str(),
        .0[0].product_id,
        .0.len()
    )]
    WrongPrices(Vec<WrongPrice>),
    /// The command would change nothing.
    #[error("{0}")]
    NothingToChange(&'static str),
    /// A customer tried to cancel an order that is no longer pending.
    #[error("a customer can cancel only a pending order; it is `{}`", .0.as_str())]
    CustomerCancelsOnlyPending(Status),
    /// Stock was to be overridden on an order past confirmation.
    #[error(
        "stock can be overridden only for pending or confirmed orders; it is `{}`",
        .0.as_str()
    )]
    OverrideNotAllowed(Status),
    /// The order has as many chat links as it may.
    #[error("the order has {limit} chat links, as many as an order takes")]
    TooManyChatLinks {
        /// The limit.
        limit: usize,
    },
    /// The order's own rules refuse it.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CommandError {
    pub(super) fn invalid_field(field: &str, message: impl Into<String>) -> CommandError {
        CommandError::InvalidField {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}
