//! ft
