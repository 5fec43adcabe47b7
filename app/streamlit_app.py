"""The nlviz dashboard: `streamlit run app/streamlit_app.py` from the repository root.

It listens on 127.0.0.1 only (.streamlit/config.toml); pass --server.address to share it.
Pages (app/views/): Start here, Live run, Equations 25-29, Runs, Results. Figures come from
`nlviz.figures`, runs from `nlviz.live` and the run store; pages hold layout and wiring.

The one decision to know: everything sits under `if __name__ == "__main__":`. Streamlit runs
this file as `__main__`, and each run's training process (`nlviz.live`) re-runs the main
script of the server as `__mp_main__` before it trains; without the guard every run's process
drew the whole page with no session, and filled the server's terminal with
"missing ScriptRunContext" warnings.
"""

if __name__ == "__main__":
    import streamlit as st

    st.set_page_config(page_title="nlviz: nested learning, live", layout="wide")
    st.navigation([
        st.Page("views/home.py", title="Start here", default=True),
        st.Page("views/live.py", title="Live run", url_path="live"),
        st.Page("views/equations.py", title="Equations 25-29", url_path="equations"),
        st.Page("views/runs.py", title="Runs", url_path="runs"),
        st.Page("views/results.py", title="Results", url_path="results"),
    ]).run()
