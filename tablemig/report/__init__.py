"""The run's reports: the model, the HTML, JUnit, run.json and the charts."""
