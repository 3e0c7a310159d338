"""Airflow glue: Asset URIs, the task-error decorator, the trigger_campaigns DAG's
wake-up and processing loop, and the local Airflow service manager.

DAG files import from here and from the product packages; the product packages
(campaigns, ml, extract, collector) never import Airflow code from here.
"""
