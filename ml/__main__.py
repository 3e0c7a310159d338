"""`python -m ml <command>`: every stage without Airflow. `python -m ml --help` lists them."""

from ml.cli import app

if __name__ == "__main__":
    app()
