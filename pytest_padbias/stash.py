"""The run's state in ``config.stash``, shared by the plugin's hooks and its report
collector: one key per kind of state, never module globals."""
import pytest

settings_key = pytest.StashKey()
entries_key = pytest.StashKey()
checks_key = pytest.StashKey()
gates_key = pytest.StashKey()
targets_key = pytest.StashKey()  # list[Target], the run's matrix
states_key = pytest.StashKey()  # target id -> TargetState
remaining_key = pytest.StashKey()  # target id -> tests of this process still to run
pages_key = pytest.StashKey()  # target id -> report base path (several targets with --padbias-report-dir)
staged_html_key = pytest.StashKey()
