"""The Streamlit app, shipped in the wheel as `atlas.app` (`atlas app` runs `streamlit_app.py`)."""
