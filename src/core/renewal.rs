//! What a node does next about its certificate (`security::renew` carries it out): renew at
//! half its life or at once when another CA signs now, and during a CA rotation confirm a
//! certificate of the new CA before anything else (the rotation waits for that, not for the
//! renewal's record, whose answer may have been lost).

/// What the node knows, gathered by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Half its life has passed.
    pub due: bool,
    /// How many CAs the cluster trusts, as last learnt (0: not known yet; 2: a rotation).
    pub cas_trusted: usize,
    /// Whether the CA that signs now signed the node's certificate (`None`: not known).
    pub signed_by_current: Option<bool>,
    /// This certificate was already confirmed to the cluster.
    pub confirmed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Confirm,
    Renew,
    Wait,
}

pub fn next(f: Facts) -> Next {
    let signer_changed = f.signed_by_current == Some(false);
    if f.cas_trusted > 1 && f.signed_by_current == Some(true) && !f.confirmed {
        Next::Confirm
    } else if f.due || signer_changed {
        Next::Renew
    } else {
        Next::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case() {
        let f = |due, cas_trusted, signed_by_current, confirmed| Facts {
            due,
            cas_trusted,
            signed_by_current,
            confirmed,
        };
        #[rustfmt::skip]
        let table = [
            // due    CAs  current     confirmed   next
            (f(false, 0, None,        false), Next::Wait),    // nothing known yet
            (f(false, 1, Some(true),  false), Next::Wait),    // no rotation: nothing to confirm
            (f(true,  1, Some(true),  false), Next::Renew),   // half its life
            (f(false, 1, Some(false), false), Next::Renew),   // another CA signs now
            (f(false, 2, Some(false), false), Next::Renew),   // a rotation started
            (f(false, 2, Some(true),  false), Next::Confirm), // renewed: show it
            (f(true,  2, Some(true),  false), Next::Confirm), // confirm before renewing again
            (f(false, 2, Some(true),  true),  Next::Wait),    // confirmed: wait for the end
            (f(true,  2, Some(true),  true),  Next::Renew),
        ];
        for (facts, want) in table {
            assert_eq!(next(facts), want, "{facts:?}");
        }
    }
}
