"""Remote workspaces: reaching a Databricks workspace (or another Modelfleet) with the databricks-sdk."""
