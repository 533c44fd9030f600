"""The Streamlit dashboard: ``vistool dashboard`` or ``streamlit run dashboard/app.py``."""
