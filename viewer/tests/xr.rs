//! The OpenXR path without a runtime (Debian ships only the loader): a clear message that says
//! how to install or select a runtime, and the session state machine.
#![cfg(feature = "vr-openxr")]

use openxr::SessionState as S;
use theta_viewer::xr::{Action, Phase, XrError, start};

#[test]
fn no_runtime_gives_the_clear_message() {
    // Make sure no runtime is picked up from the environment.
    let dir = tempfile::tempdir().unwrap();
    no_runtime_env(dir.path());
    match start() {
        Err(e @ XrError::RuntimeUnavailable) => {
            let msg = e.to_string();
            assert!(msg.contains("XR_RUNTIME_JSON") && msg.contains("--headless"), "{msg}");
        }
        Err(e @ XrError::LoaderMissing(_)) => {
            assert!(e.to_string().contains("libopenxr-loader1"), "{e}");
            panic!("the OpenXR loader is not installed here (apt-get install libopenxr-loader1): {e}");
        }
        Err(e) => panic!("expected ERROR_RUNTIME_UNAVAILABLE, got: {e}"),
        Ok(s) => panic!("an OpenXR runtime answered on this machine: {s:?}"),
    }
}

fn no_runtime_env(home: &std::path::Path) {
    // The loader looks for an active runtime under XDG_CONFIG_HOME, /etc and XR_RUNTIME_JSON.
    let missing = home.join("no-runtime.json");
    // Setting the environment is process-wide; this test binary runs nothing else that reads it.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("XR_RUNTIME_JSON", &missing);
        std::env::set_var("XDG_CONFIG_HOME", home);
    }
}

#[test]
fn session_states_drive_the_frame_loop() {
    let mut p = Phase::Idle;
    let mut actions = Vec::new();
    for s in [S::IDLE, S::READY, S::SYNCHRONIZED, S::VISIBLE, S::FOCUSED, S::VISIBLE, S::STOPPING, S::IDLE, S::EXITING]
    {
        let (next, a) = p.on(s);
        actions.push((next, a));
        p = next;
    }
    use Action::*;
    use Phase::*;
    assert_eq!(
        actions,
        vec![
            (Idle, None),
            (Running, Begin),
            (Running, None),
            (Running, None),
            (Focused, None),
            (Running, None),
            (Stopped, End),
            (Idle, None),
            (Phase::Exit, Action::Exit),
        ]
    );
    assert!(Running.renders() && Focused.renders() && !Idle.renders() && !Stopped.renders());
    // Events out of order change nothing.
    assert_eq!(Phase::Idle.on(S::FOCUSED), (Idle, None));
    assert_eq!(Phase::Focused.on(S::LOSS_PENDING), (Phase::Exit, Action::Exit));
}
