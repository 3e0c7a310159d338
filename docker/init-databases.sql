-- The warehouse database is created by the image; the metadata stores are not.
create database airflow;
create database mlflow;
