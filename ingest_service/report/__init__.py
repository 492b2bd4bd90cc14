"""The annual report: its numbers (build) and its Excel workbook."""
