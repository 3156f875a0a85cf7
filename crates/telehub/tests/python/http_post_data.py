"""Flask tutorial, device side: POST one sensor reading to /data with requests.

The tutorial's code, unchanged except that the server host and port come from the
command line. Prints the status code and the JSON answer, one per line, so the test
can check them. Run by crates/telehub/tests/e2e_http.rs.

Usage: http_post_data.py HOST PORT [BODY]
  BODY, when given, is sent as the raw request body instead (the bad-body test).
"""
import sys

import requests

url = "http://{}:{}/data".format(sys.argv[1], sys.argv[2])

if len(sys.argv) > 3:
    response = requests.post(url, data=sys.argv[3], headers={"Content-Type": "application/json"})
else:
    data = {"device_id": "raspi-01", "temperature": 25.5, "humidity": 60.3}
    response = requests.post(url, json=data)

print(response.status_code)
print(response.json())
