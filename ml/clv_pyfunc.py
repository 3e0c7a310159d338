"""The CLV model as MLflow serves it, logged as code (MLflow's models from code): nothing is pickled.

Its only artifact is the JSON of fitted parameters (ml.clv.ClvModel);
`mlflow.pyfunc.load_model` runs this file, and ml.clv.load_version reads the
JSON without running any code.
"""

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from ml.clv import ClvModel, predict


class ClvPythonModel(PythonModel):
    def load_context(self, context):
        self.model = ClvModel.from_json(Path(context.artifacts["params"]).read_text())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return predict(self.model, model_input)


mlflow.models.set_model(ClvPythonModel())
