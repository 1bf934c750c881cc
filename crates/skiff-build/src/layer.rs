//! Layer tars from overlayfs upper directories (being written).
