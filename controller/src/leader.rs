//! Leader election on a Lease (filled in by the controller-shell work).
