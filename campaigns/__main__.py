from campaigns.cli import app

app()
