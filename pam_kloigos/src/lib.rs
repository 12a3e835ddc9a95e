//! pam_kloigos: the PAM account module.
